/* What efl-bench says: the text lines as each measurement finishes, the JSON and CSV files
 * (--json, --csv: one row per case and op, each naming its case), and what failed. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime (bench_util.h) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* ------------------------------------------------------------------ errors */
static void print_log(const efl_context *ectx)
{
    if (!ectx)
        return;
    size_t len = efl_context_log(ectx, NULL, 0);
    char *buf = len ? malloc(len + 1) : NULL;
    if (!buf)
        return;
    efl_context_log(ectx, buf, len + 1);
    fprintf(stderr, "---- efl_context_log ----\n%s\n-------------------------\n", buf);
    free(buf);
}

int efl_fail(const char *what, const char *dev, efl_status st, const efl_context *ectx)
{
    fprintf(stderr, "efl-bench: %s failed on %s: %s (status %d", what, dev, efl_status_string(st), (int)st);
    if (ectx && efl_context_last_cl_error(ectx) != CL_SUCCESS)
        fprintf(stderr, ", OpenCL error %d", (int)efl_context_last_cl_error(ectx));
    fprintf(stderr, ")\n");
    print_log(ectx);
    return -1;
}

int cl_fail(const char *what, const char *dev, cl_int err)
{
    fprintf(stderr, "efl-bench: %s failed on %s: OpenCL error %d\n", what, dev, (int)err);
    return -1;
}

/* ------------------------------------------------------------------ text */
void report_device(const device_result *d)
{
    printf("\n== %s  [%s%s]\n", d->name, d->platform, (d->type & CL_DEVICE_TYPE_CPU) ? ", CPU" : "");
    printf("   max alloc %.0f MiB, global memory %.0f MiB\n", (double)d->max_alloc / 1048576.0,
           (double)d->global_mem / 1048576.0);
    fflush(stdout);
}

void report_first_call(const bench_plan *plan, const device_result *d)
{
    printf("   first call (efl_loss_create on a fresh context -> first step finished, N=%zu C=%u): cold %.3f s, "
           "warm (disk cache) %.3f s\n",
           plan->n_of[0], plan->cases[0].c, d->first_call_s, d->first_call_warm_s);
}

void report_ceilings(const bench_ceilings *cc)
{
    printf("   ceilings (%.0f MiB buffers%s): copy %.2f GB/s, read %.2f GB/s; empty kernel enqueue-to-finish "
           "%.1f us\n",
           (double)cc->bytes / 1048576.0, cc->wall_clock ? ", wall clock" : "", cc->copy_gbps, cc->read_gbps,
           cc->empty_roundtrip_s * 1e6);
}

void report_table_header(void)
{
    printf("   %-7s %-12s %8s %5s %5s %11s %8s %7s %8s %s\n", "op", "case", "N", "C", "dtype", "median ms", "GB/s",
           "% copy", "Gelem/s", "timer");
}

void report_row(const result_row *row)
{
    printf("   %-7s %-12s %8zu %5u %5s %11.3f %8.2f %6.1f%% %8.3f %s%s\n", row->op, row->label, row->n, row->c,
           row->dtype, row->median_s * 1e3, row->gbps, 100.0 * row->fraction_of_copy, row->gelem_s,
           row->wall ? "wall" : "events", row->n < row->n_wanted ? "  (N clipped by memory)" : "");
    fflush(stdout);
}

void report_skipped(const case_def *cs, size_t n)
{
    if (cs->layout != EFL_LAYOUT_ROWS && n == 0)
        printf("   %-7s %-12s (its level buffers do not fit in this device's memory: skipped)\n", "", cs->name);
    else
        printf("   %-7s %-12s (N=%zu clipped to %zu by memory: same shape as above, skipped)\n", "", cs->name, cs->n,
               n);
}

void report_small_step(const device_result *d, int n, int c)
{
    printf("   small step (N=%d, C=%d) enqueue-to-finish: %.1f us = %.2f x the empty kernel's %.1f us\n", n, c,
           d->small_step_s * 1e6, d->empty_roundtrip_s > 0.0 ? d->small_step_s / d->empty_roundtrip_s : 0.0,
           d->empty_roundtrip_s * 1e6);
}

void report_native(const result_row *row, double native_gelem_s)
{
    printf("   native C loop, same arithmetic (efl-native-loop %zu %u, run now): %.3f Gelem/s; the step runs "
           "at %.2f x that\n",
           row->n, row->c, native_gelem_s, row->gelem_s / native_gelem_s);
}

/* ------------------------------------------------------------------ ratios */
/* The step's G elements/s of the named case, or 0 where this run has none. */
static double step_rate(const device_result *d, const char *label)
{
    for (size_t r = 0; r < d->nrows; ++r)
        if (strcmp(d->rows[r].op, "step") == 0 && strcmp(d->rows[r].label, label) == 0)
            return d->rows[r].gelem_s;
    return 0.0;
}

/* Side-by-side ratios of one run, each > 0 only where both of its figures were measured: the
 * 16-bit and head-layout steps against the float32 rows step (element rates), the step against
 * the native C loop, and the small step against the empty kernel (times: lower is better). */
static bench_ratios ratios_of(const device_result *d)
{
    const double f32 = step_rate(d, "lvis");
    bench_ratios q = {0};
    if (f32 > 0.0) {
        q.f16 = step_rate(d, "lvis-f16") / f32;
        q.bf16 = step_rate(d, "lvis-bf16") / f32;
        q.anchor = step_rate(d, "lvis-anchor") / f32;
        q.class_major = step_rate(d, "lvis-class") / f32;
        q.native = d->native_gelem_s > 0.0 ? f32 / d->native_gelem_s : 0.0;
    }
    q.small = d->empty_roundtrip_s > 0.0 ? d->small_step_s / d->empty_roundtrip_s : 0.0;
    return q;
}

static void print_ratio(const char *what, double v, int *first)
{
    if (v <= 0.0)
        return;
    printf("%s%s %.2fx", *first ? "   ratios: " : "; ", what, v);
    *first = 0;
}

void report_ratios(const device_result *d)
{
    const bench_ratios q = ratios_of(d);
    int first = 1;
    print_ratio("f16/f32", q.f16, &first);
    print_ratio("bf16/f32", q.bf16, &first);
    print_ratio("anchor/rows", q.anchor, &first);
    print_ratio("class/rows", q.class_major, &first);
    print_ratio("step/native loop", q.native, &first);
    print_ratio("small step/empty kernel", q.small, &first);
    if (!first)
        printf("\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------ JSON */
static void json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        const unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            fprintf(f, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(f, "\\u%04x", ch);
        else
            fputc(ch, f);
    }
    fputc('"', f);
}

static void json_device(FILE *f, const device_result *d)
{
    fprintf(f, "{\"name\":");
    json_string(f, d->name);
    fprintf(f, ",\"vendor\":");
    json_string(f, d->vendor);
    fprintf(f, ",\"platform\":");
    json_string(f, d->platform);
    fprintf(f,
            ",\"copy_gbps\":%.6g,\"read_gbps\":%.6g,\"first_call_s\":%.6g,\"first_call_warm_s\":%.6g,"
            "\"empty_roundtrip_s\":%.6g,"
            "\"small_step_s\":%.6g,\"native_loop_gelem_s\":%.6g,",
            d->copy_gbps, d->read_gbps, d->first_call_s, d->first_call_warm_s, d->empty_roundtrip_s, d->small_step_s,
            d->native_gelem_s);
    const bench_ratios q = ratios_of(d);
    fprintf(f,
            "\"ratios\":{\"f16_vs_f32\":%.6g,\"bf16_vs_f32\":%.6g,\"anchor_vs_rows\":%.6g,\"class_vs_rows\":%.6g,"
            "\"step_vs_native\":%.6g,\"small_vs_empty\":%.6g},\"cases\":[",
            q.f16, q.bf16, q.anchor, q.class_major, q.native, q.small);
    for (size_t r = 0; r < d->nrows; ++r) {
        const result_row *w = &d->rows[r];
        fprintf(f, "%s\n  {\"case\":", r ? "," : "");
        json_string(f, w->label);
        fprintf(f,
                ",\"op\":\"%s\",\"n\":%zu,\"c\":%u,\"dtype\":\"%s\",\"median_s\":%.6g,\"gbps\":%.6g,"
                "\"fraction_of_copy\":%.6g,\"gelem_s\":%.6g}",
                w->op, w->n, w->c, w->dtype, w->median_s, w->gbps, w->fraction_of_copy, w->gelem_s);
    }
    fprintf(f, "]}");
}

int report_json(const char *path, const device_result *d, size_t nd)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "{\"devices\":[");
    for (size_t i = 0; i < nd; ++i) {
        fprintf(f, "%s\n ", i ? "," : "");
        json_device(f, &d[i]);
    }
    fprintf(f, "\n]}\n");
    return fclose(f) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ CSV */
/* A CSV field in double quotes, inner quotes doubled. */
static void csv_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; ++s) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int report_csv(const char *path, const device_result *d, size_t nd)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, "device,case,op,n,c,dtype,median_s,gbps,fraction_of_copy,gelem_s\n");
    for (size_t i = 0; i < nd; ++i)
        for (size_t r = 0; r < d[i].nrows; ++r) {
            const result_row *w = &d[i].rows[r];
            csv_string(f, d[i].name);
            fputc(',', f);
            csv_string(f, w->label);
            fprintf(f, ",%s,%zu,%u,%s,%.6g,%.6g,%.6g,%.6g\n", w->op, w->n, w->c, w->dtype, w->median_s, w->gbps,
                    w->fraction_of_copy, w->gelem_s);
        }
    return fclose(f) == 0 ? 0 : -1;
}
