#define _POSIX_C_SOURCE 200809L /* mkdtemp, opendir */
/*
 * Checkpoints (efl.h "checkpoints"): k steps, save, load into a fresh loss, m more steps must
 * equal k + m steps straight through, bitwise (loss, gradient, state), with float64
 * accumulators and with float pairs; every refused file (truncated, corrupted, another version,
 * C, gamma, mode; a missing path; a focal-loss loss) leaves the state bitwise as it was; a save
 * is atomic (no temporary file left, a failed save leaves nothing); the memory form holds the
 * file's bytes. A FIFO, a folder or a device is refused at once (EFL_ERROR_IO, never a blocked
 * call: an alarm fails the test instead of letting it hang), the state untouched; a save
 * removes its path's temporaries left by a dead process, and never a live process's. The format is checked against its description here, by a reader of our own
 * (little-endian fields, FNV-1a written from its definition), not the library's.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "test_util.h"

#define STEPS 6 /* k = 3 before the checkpoint, m = 3 after */
#define K 3
#define HEADER 52

static tu_env E;
static char DIR_[256];

/* ------------------------------------------------------------ files and bytes */
static void path_in_dir(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", DIR_, name);
}

static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        const long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL &&
            fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *size = (size_t)n;
    }
    fclose(f);
    return buf;
}

static void spit(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
        tu_fatal(__FILE__, __LINE__, "writing a test file");
}

static uint64_t le(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* FNV-1a 64 from its definition (offset basis 14695981039346656037, prime 2^40 + 2^8 + 0xb3) */
static uint64_t fnv1a(const unsigned char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; ++i)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* After an edit: the checksum made right again, so only the edit is wrong with the file. */
static void reseal(unsigned char *p, size_t size)
{
    put_le64(p + size - 8, fnv1a(p, size - 8));
}

static size_t count_temporaries(void)
{
    DIR *d = opendir(DIR_);
    size_t n = 0;
    if (!d)
        tu_fatal(__FILE__, __LINE__, "opendir");
    for (struct dirent *de; (de = readdir(d)) != NULL;)
        n += strstr(de->d_name, ".tmp.") != NULL;
    closedir(d);
    return n;
}

static void remove_dir(void)
{
    DIR *d = opendir(DIR_);
    if (!d)
        return;
    char path[512];
    for (struct dirent *de; (de = readdir(d)) != NULL;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        path_in_dir(path, sizeof path, de->d_name);
        remove(path);
    }
    closedir(d);
    rmdir(DIR_);
}

/* ------------------------------------------------------------ loss helpers */
static efl_loss *make_loss(uint32_t C, efl_mode mode, efl_accumulate acc)
{
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, mode);
    cfg.accumulate = acc;
    return tu_loss(&E, &cfg);
}

static unsigned char *export_bytes(efl_loss *loss, size_t *size)
{
    *size = 0;
    REQUIRE_OK(efl_loss_export_checkpoint(loss, E.queue, NULL, size));
    unsigned char *buf = malloc(*size);
    if (!buf)
        tu_fatal(__FILE__, __LINE__, "malloc");
    REQUIRE_OK(efl_loss_export_checkpoint(loss, E.queue, buf, size));
    return buf;
}

/* The state two ways: float64 arrays, and the exported bytes (which also hold the float32
 * residuals, so a float-pair state is compared whole). */
typedef struct {
    efl_ref_state st;
    unsigned char *bytes;
    size_t size;
} snapshot;

static void take(efl_loss *loss, uint32_t C, snapshot *s)
{
    if (!efl_ref_state_init(&s->st, C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_read_state(&E, loss, &s->st);
    s->bytes = export_bytes(loss, &s->size);
}

static int same(const snapshot *a, const snapshot *b)
{
    return tu_state_equal_bits(&a->st, &b->st) && a->size == b->size && memcmp(a->bytes, b->bytes, a->size) == 0;
}

static void drop(snapshot *s)
{
    efl_ref_state_free(&s->st);
    free(s->bytes);
}

/* Checks a load that must fail with `want` and leave the state exactly as it was. */
static void expect_refused(efl_loss *loss, uint32_t C, const char *path, efl_status want, const char *what)
{
    snapshot before, after;
    take(loss, C, &before);
    const efl_status got = efl_loss_load_checkpoint(loss, E.queue, path);
    CHECK_MSG(got == want, "%s: got %s, want %s", what, efl_status_string(got), efl_status_string(want));
    take(loss, C, &after);
    CHECK_MSG(same(&before, &after), "%s: the state changed", what);
    drop(&before);
    drop(&after);
}

static void expect_refused_bytes(efl_loss *loss, uint32_t C, const unsigned char *bytes, size_t size,
                                 efl_status want, const char *what)
{
    char path[512];
    path_in_dir(path, sizeof path, "planted.ckpt");
    spit(path, bytes, size);
    expect_refused(loss, C, path, want, what);
}

/* ------------------------------------------------------------ the format, independently */
/* The file against the format's description: header fields, the totals equal to what
 * read_state gives (a double per total), residuals that only refine them, the checksum.
 * Returns how many residuals are nonzero. */
static size_t check_format(const unsigned char *p, size_t size, const efl_loss_config *cfg, const efl_ref_state *st)
{
    const uint32_t C = cfg->num_classes;
    if (!CHECK_MSG(size == 60 + 36 * (size_t)C, "size %zu for C=%u", size, C))
        return 0;
    CHECK(memcmp(p, "EFLCKPT\0", 8) == 0);
    CHECK(le(p + 8, 4) == 1 && le(p + 12, 4) == (uint32_t)cfg->mode && le(p + 16, 4) == C && le(p + 20, 4) == 0);
    const float fields[5] = {cfg->gamma, cfg->alpha, cfg->scale_factor, cfg->mu, cfg->loss_weight};
    for (int i = 0; i < 5; ++i)
        CHECK_MSG(memcmp(p + 24 + 4 * i, &fields[i], 4) == 0, "float field %d", i); /* little-endian host */
    CHECK(le(p + 44, 4) == (uint32_t)cfg->ignore_index && le(p + 48, 4) == (uint32_t)cfg->labels);
    CHECK_MSG(le(p + size - 8, 8) == fnv1a(p, size - 8), "checksum");
    const double *arrays[3] = {st->pos, st->neg, st->g};
    size_t bad = 0, nonzero = 0;
    for (size_t i = 0; i < 3 * (size_t)C; ++i) {
        double v;
        float r;
        memcpy(&v, p + HEADER + 8 * i, 8);
        memcpy(&r, p + HEADER + 24 * (size_t)C + 4 * i, 4);
        bad += memcmp(&v, &arrays[i / C][i % C], 8) != 0 || v + (double)r != v;
        nonzero += r != 0.0f;
    }
    CHECK_MSG(bad == 0, "%zu totals differ from read_state or have a residual that is not a rounding error", bad);
    return nonzero;
}

/* ------------------------------------------------------------ training */
typedef struct {
    size_t n;
    uint32_t C;
    float *x[STEPS];
    int32_t *y[STEPS];
    float norm[STEPS];
} batches;

static void make_batches(batches *b, size_t n, uint32_t C, uint64_t seed)
{
    b->n = n;
    b->C = C;
    tu_rng r = {seed};
    tu_label_opts lo = tu_default_label_opts();
    lo.fg_fraction = 0.2; /* many positives: every class's totals move */
    for (int s = 0; s < STEPS; ++s) {
        b->x[s] = malloc(n * C * sizeof(float));
        b->y[s] = malloc(n * sizeof(int32_t));
        if (!b->x[s] || !b->y[s])
            tu_fatal(__FILE__, __LINE__, "malloc");
        tu_make_logits(&r, b->x[s], n * C);
        const size_t np = tu_make_labels(&r, b->y[s], n, C, &lo);
        b->norm[s] = np ? (float)np : 1.0f;
    }
}

static void free_batches(batches *b)
{
    for (int s = 0; s < STEPS; ++s) {
        free(b->x[s]);
        free(b->y[s]);
    }
}

/* Steps [from, to) of the batches; loss and gradient of each recorded (grads: n*C per step). */
static void train(efl_loss *loss, const batches *b, int from, int to, float *losses, float *grads)
{
    const size_t nc = b->n * b->C;
    cl_mem bl = tu_buf(&E, 4, NULL), bg = tu_buf(&E, nc * 4, NULL);
    for (int s = from; s < to; ++s) {
        cl_mem bx = tu_buf(&E, nc * 4, b->x[s]), by = tu_buf(&E, b->n * 4, b->y[s]);
        CHECK_STATUS(efl_enqueue_step(loss, E.queue, bx, by, b->n, b->norm[s], EFL_REDUCTION_MEAN, bl, bg, 0, NULL,
                                      NULL),
                     EFL_OK);
        CHECK_STATUS(efl_loss_query_status(loss, E.queue), EFL_OK);
        tu_read(&E, bl, 4, &losses[s]);
        tu_read(&E, bg, nc * 4, grads + (size_t)s * nc);
        tu_release(bx);
        tu_release(by);
    }
    tu_release(bl);
    tu_release(bg);
}

/* A state of large totals, so float pairs carry low bits far below ulp(hi) (residuals). */
static void write_large_state(efl_loss *loss, uint32_t C, uint64_t seed)
{
    efl_ref_state s;
    if (!efl_ref_state_init(&s, C))
        tu_fatal(__FILE__, __LINE__, "malloc");
    tu_rng r = {seed};
    for (uint32_t j = 0; j < C; ++j) {
        s.pos[j] = 1e3 * (1.0 + tu_uniform(&r));
        s.neg[j] = 1e5 * (1.0 + tu_uniform(&r));
        s.g[j] = s.pos[j] / s.neg[j];
    }
    tu_write_state(&E, loss, &s);
    efl_ref_state_free(&s);
}

/* The test: k steps, save, load into a fresh loss, m steps == k + m steps straight. */
static void resume_case(const char *name, efl_mode mode, efl_accumulate acc, int large_start, uint64_t seed)
{
    tu_begin(name);
    const uint32_t C = 37;
    const size_t n = tu_rows(2000), nc = n * C;
    batches b;
    make_batches(&b, n, C, seed);
    float loss_a[STEPS], loss_b[STEPS];
    float *grad_a = malloc(STEPS * nc * sizeof(float)), *grad_b = malloc(STEPS * nc * sizeof(float));
    if (!grad_a || !grad_b)
        tu_fatal(__FILE__, __LINE__, "malloc");

    efl_loss *straight = make_loss(C, mode, acc), *first = make_loss(C, mode, acc);
    if (large_start) {
        write_large_state(straight, C, seed + 1);
        write_large_state(first, C, seed + 1);
    }
    snapshot start;
    take(straight, C, &start);
    train(straight, &b, 0, STEPS, loss_a, grad_a);

    train(first, &b, 0, K, loss_b, grad_b);
    char path[512];
    path_in_dir(path, sizeof path, "resume.ckpt");
    CHECK_STATUS(efl_loss_save_checkpoint(first, E.queue, path), EFL_OK);
    snapshot saved;
    take(first, C, &saved);
    efl_loss_destroy(first);

    /* the file: as described, and what export gives */
    size_t size = 0;
    unsigned char *file = slurp(path, &size);
    if (!file)
        tu_fatal(__FILE__, __LINE__, "reading the checkpoint");
    efl_loss_config cfg;
    efl_loss_config_init_mode(&cfg, C, mode);
    cfg.accumulate = acc;
    const size_t residuals = check_format(file, size, &cfg, &saved.st);
    CHECK_MSG(size == saved.size && memcmp(file, saved.bytes, size) == 0, "export differs from the file");
    printf("  %zu of %u residuals nonzero\n", residuals, 3 * C);

    efl_loss *resumed = make_loss(C, mode, acc);
    CHECK_STATUS(efl_loss_load_checkpoint(resumed, E.queue, path), EFL_OK);
    snapshot loaded;
    take(resumed, C, &loaded);
    CHECK_MSG(same(&loaded, &saved), "the loaded state differs from the saved one");
    train(resumed, &b, K, STEPS, loss_b, grad_b);

    for (int s = K; s < STEPS; ++s) {
        CHECK_MSG(memcmp(&loss_a[s], &loss_b[s], 4) == 0, "step %d: loss %.9g resumed, %.9g straight", s, loss_b[s],
                  loss_a[s]);
        size_t diff = 0;
        for (size_t i = (size_t)s * nc; i < (size_t)(s + 1) * nc; ++i)
            diff += memcmp(&grad_a[i], &grad_b[i], 4) != 0;
        CHECK_MSG(diff == 0, "step %d: %zu gradient elements differ", s, diff);
    }
    snapshot end_a, end_b;
    take(straight, C, &end_a);
    take(resumed, C, &end_b);
    CHECK_MSG(same(&end_a, &end_b), "final state: resumed differs from straight through");
    /* not vacuous: the steps computed something and moved the state */
    CHECK(isfinite(loss_a[STEPS - 1]) && loss_a[STEPS - 1] > 0.0f);
    CHECK(!tu_state_equal_bits(&start.st, &saved.st) && !tu_state_equal_bits(&saved.st, &end_a.st));

    drop(&start);
    drop(&saved);
    drop(&loaded);
    drop(&end_a);
    drop(&end_b);
    free(file);
    efl_loss_destroy(straight);
    efl_loss_destroy(resumed);
    free(grad_a);
    free(grad_b);
    free_batches(&b);
    tu_end();
}

/* ------------------------------------------------------------ residuals */
/* Float pairs (hi, lo) as the kernels keep them (hi = hi + lo rounded to float), with lo 30 to
 * 45 bits below hi's top bit so that hi + lo needs more than a double's 53 bits: a checkpoint
 * must carry the rest (the residual) for the pair to come back. v and r by TwoSum, here. */
/* count pairs of magnitude 2^(emax - 40) .. 2^emax */
static void make_wide_pairs(tu_rng *rng, size_t count, int emax, double *v, float *r)
{
    for (size_t i = 0; i < count; ++i) {
        const int e = emax - 1 - (int)tu_below(rng, 40), gap = 30 + (int)tu_below(rng, 16);
        const double m_hi = (double)((1u << 23) | tu_below(rng, 1u << 23));
        const double m_lo = (double)((1u << 23) | tu_below(rng, 1u << 23) | 1u); /* odd: a lowest bit */
        const float hi = (float)ldexp(m_hi, e - 23);
        const float lo = (float)ldexp(tu_below(rng, 2) ? m_lo : -m_lo, e - 23 - gap);
        const double a = hi, b = lo, s = a + b, bb = s - a;
        v[i] = s;
        r[i] = (float)((a - (s - bb)) + (b - bb));
    }
}

static void test_residuals(void)
{
    tu_begin("float pairs wider than a double come back bitwise");
    const uint32_t C = 8;
    const size_t n = 3 * C;
    efl_loss *pairs = make_loss(C, EFL_MODE_EFL, EFL_ACCUMULATE_FLOAT_PAIRS);
    size_t size = 0;
    unsigned char *ck = export_bytes(pairs, &size);
    double v[3 * 8];
    float r[3 * 8];
    tu_rng rng = {99};
    make_wide_pairs(&rng, 2 * C, 20, v, r);
    make_wide_pairs(&rng, C, 0, v + 2 * C, r + 2 * C); /* EFL's pos_neg lies in [0, 1] */
    size_t nonzero = 0;
    for (size_t i = 0; i < n; ++i) {
        memcpy(ck + HEADER + 8 * i, &v[i], 8); /* little-endian host */
        memcpy(ck + HEADER + 8 * n + 4 * i, &r[i], 4);
        nonzero += r[i] != 0.0f;
    }
    reseal(ck, size);
    CHECK_MSG(nonzero > n / 2, "only %zu residuals nonzero: the case tests nothing", nonzero);

    CHECK_STATUS(efl_loss_import_checkpoint(pairs, E.queue, ck, size), EFL_OK);
    size_t back_size = 0;
    unsigned char *back = export_bytes(pairs, &back_size);
    CHECK_MSG(back_size == size && memcmp(back, ck, size) == 0, "float pairs: the checkpoint did not round trip");
    free(back);

    /* a float64 device keeps the nearest double: the totals, residuals 0 */
    if (E.has_fp64) {
        efl_loss *wide = make_loss(C, EFL_MODE_EFL, EFL_ACCUMULATE_AUTO);
        CHECK_STATUS(efl_loss_import_checkpoint(wide, E.queue, ck, size), EFL_OK);
        back = export_bytes(wide, &back_size);
        CHECK(back_size == size && memcmp(back + HEADER, ck + HEADER, 8 * n) == 0);
        size_t zero = 0;
        for (size_t i = 0; i < n; ++i) {
            float b;
            memcpy(&b, back + HEADER + 8 * n + 4 * i, 4);
            zero += b == 0.0f;
        }
        CHECK_MSG(zero == n, "float64 totals with %zu nonzero residuals", n - zero);
        free(back);
        efl_loss_destroy(wide);
    }
    free(ck);
    efl_loss_destroy(pairs);
    tu_end();
}

/* ------------------------------------------------------------ EQLv2 */
static void test_eqlv2_round_trip(void)
{
    tu_begin("EQLv2: reset to 100, g above 1 round trips");
    const uint32_t C = 5;
    efl_loss *a = make_loss(C, EFL_MODE_EQLV2, EFL_ACCUMULATE_AUTO);
    efl_ref_state s;
    efl_ref_state_init(&s, C);
    CHECK_STATUS(efl_loss_reset_state(a, E.queue), EFL_OK);
    tu_read_state(&E, a, &s);
    for (uint32_t j = 0; j < C; ++j)
        CHECK_MSG(s.pos[j] == 0.0 && s.neg[j] == 0.0 && s.g[j] == 100.0, "reset class %u: %g %g %g", j, s.pos[j],
                  s.neg[j], s.g[j]);
    for (uint32_t j = 0; j < C; ++j) {
        s.pos[j] = 3.0 + j;
        s.neg[j] = 0.01 * (j + 1);
        s.g[j] = s.pos[j] / (s.neg[j] + 1e-10); /* unclamped: up to 300 */
    }
    tu_write_state_canonical(&E, a, &s);
    char path[512];
    path_in_dir(path, sizeof path, "eqlv2.ckpt");
    CHECK_STATUS(efl_loss_save_checkpoint(a, E.queue, path), EFL_OK);
    efl_loss *b = make_loss(C, EFL_MODE_EQLV2, EFL_ACCUMULATE_AUTO);
    CHECK_STATUS(efl_loss_load_checkpoint(b, E.queue, path), EFL_OK);
    efl_ref_state back;
    efl_ref_state_init(&back, C);
    tu_read_state(&E, b, &back);
    CHECK(tu_state_equal_bits(&back, &s));
    /* an EFL loss reads an EQLv2 checkpoint's g as something else */
    efl_loss *efl = make_loss(C, EFL_MODE_EFL, EFL_ACCUMULATE_AUTO);
    expect_refused(efl, C, path, EFL_ERROR_CHECKPOINT_MISMATCH, "EQLv2 checkpoint into an EFL loss");
    efl_ref_state_free(&s);
    efl_ref_state_free(&back);
    efl_loss_destroy(a);
    efl_loss_destroy(b);
    efl_loss_destroy(efl);
    tu_end();
}

/* ------------------------------------------------------------ refused files */
/* A loss of C=3 with a state of its own, and a good checkpoint of another state. */
typedef struct {
    efl_loss *loss;
    unsigned char *good;
    size_t size;
} fault_fixture;

static void fault_setup(fault_fixture *f)
{
    const uint32_t C = 3;
    efl_loss *donor = make_loss(C, EFL_MODE_EFL, EFL_ACCUMULATE_AUTO);
    write_large_state(donor, C, 5);
    f->good = export_bytes(donor, &f->size);
    efl_loss_destroy(donor);
    f->loss = make_loss(C, EFL_MODE_EFL, EFL_ACCUMULATE_AUTO);
    write_large_state(f->loss, C, 6);
}

static void test_truncated_and_flipped(void)
{
    tu_begin("truncated or corrupted files are refused, state untouched");
    fault_fixture f;
    fault_setup(&f);
    char what[64];
    for (size_t cut = 0; cut < f.size; ++cut) {
        snprintf(what, sizeof what, "cut to %zu bytes", cut);
        expect_refused_bytes(f.loss, 3, f.good, cut, EFL_ERROR_CHECKPOINT_CORRUPT, what);
    }
    unsigned char *bad = malloc(f.size + 1);
    /* one byte changed anywhere (magic, header, totals, residuals, checksum): FNV-1a's steps are
     * bijections, so any single-byte change changes the sum */
    for (size_t i = 0; i < f.size; ++i) {
        memcpy(bad, f.good, f.size);
        bad[i] ^= (unsigned char)(1u << (i % 8));
        snprintf(what, sizeof what, "byte %zu flipped", i);
        expect_refused_bytes(f.loss, 3, bad, f.size, EFL_ERROR_CHECKPOINT_CORRUPT, what);
    }
    memcpy(bad, f.good, f.size);
    bad[f.size] = 0;
    expect_refused_bytes(f.loss, 3, bad, f.size + 1, EFL_ERROR_CHECKPOINT_CORRUPT, "one byte appended");
    expect_refused_bytes(f.loss, 3, bad, 0, EFL_ERROR_CHECKPOINT_CORRUPT, "empty file");
    free(bad);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

/* Edits with the checksum made right: only the edited field is wrong. */
static void test_planted_fields(void)
{
    tu_begin("other version, flags, values: refused with the right status");
    fault_fixture f;
    fault_setup(&f);
    unsigned char *bad = malloc(f.size);
    const double negative = -1.0, nan = NAN, inf = INFINITY;
    const float big_residual = 1.0f;
    struct {
        size_t offset;
        const void *value;
        size_t bytes;
        efl_status want;
        const char *what;
    } edits[] = {
        {8, "\2\0\0\0", 4, EFL_ERROR_CHECKPOINT_VERSION, "version 2"},
        {8, "\0\0\0\0", 4, EFL_ERROR_CHECKPOINT_VERSION, "version 0"},
        {20, "\1\0\0\0", 4, EFL_ERROR_CHECKPOINT_VERSION, "a reserved flag"},
        {16, "\4\0\0\0", 4, EFL_ERROR_CHECKPOINT_CORRUPT, "C=4 in a file of C=3's size"},
        {HEADER + 8, &negative, 8, EFL_ERROR_CHECKPOINT_CORRUPT, "a negative total"},
        {HEADER + 16, &nan, 8, EFL_ERROR_CHECKPOINT_CORRUPT, "a NaN total"},
        {HEADER + 64, &inf, 8, EFL_ERROR_CHECKPOINT_CORRUPT, "an infinite pos_neg"},
        {HEADER + 72 + 4, &big_residual, 4, EFL_ERROR_CHECKPOINT_CORRUPT, "a residual larger than rounding"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof *edits; ++i) {
        memcpy(bad, f.good, f.size);
        memcpy(bad + edits[i].offset, edits[i].value, edits[i].bytes); /* little-endian host */
        reseal(bad, f.size);
        expect_refused_bytes(f.loss, 3, bad, f.size, edits[i].want, edits[i].what);
    }
    free(bad);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

/* Another C, gamma, alpha, s, mu, mode: refused. loss_weight, ignore_index, labels: accepted. */
static void test_other_configurations(void)
{
    tu_begin("checkpoints of other configurations");
    fault_fixture f;
    fault_setup(&f);
    char path[512];
    path_in_dir(path, sizeof path, "other.ckpt");
    struct {
        uint32_t C;
        efl_mode mode;
        float gamma, alpha, s, mu, loss_weight;
        int32_t ignore;
        efl_label_convention labels;
        efl_status want;
        const char *what;
    } others[] = {
#define MISMATCH EFL_ERROR_CHECKPOINT_MISMATCH
        {4, EFL_MODE_EFL, 2.0f, 0.25f, 8.0f, 0.8f, 1.0f, -1, EFL_LABELS_REFERENCE, MISMATCH, "C=4"},
        {3, EFL_MODE_EFL, 2.5f, 0.25f, 8.0f, 0.8f, 1.0f, -1, EFL_LABELS_REFERENCE, MISMATCH, "gamma"},
        {3, EFL_MODE_EFL, 2.0f, 0.5f, 8.0f, 0.8f, 1.0f, -1, EFL_LABELS_REFERENCE, MISMATCH, "alpha"},
        {3, EFL_MODE_EFL, 2.0f, 0.25f, 4.0f, 0.8f, 1.0f, -1, EFL_LABELS_REFERENCE, MISMATCH, "s"},
        {3, EFL_MODE_EFL, 2.0f, 0.25f, 8.0f, 0.7f, 1.0f, -1, EFL_LABELS_REFERENCE, MISMATCH, "mu"},
        {3, EFL_MODE_EQLV2, 2.0f, 0.25f, 8.0f, 0.8f, 1.0f, -1, EFL_LABELS_REFERENCE, MISMATCH, "mode"},
        {3, EFL_MODE_EFL, 2.0f, 0.25f, 8.0f, 0.8f, 2.0f, 255, EFL_LABELS_ZERO_BASED, EFL_OK, "loss_weight, labels"},
#undef MISMATCH
    };
    for (size_t i = 0; i < sizeof others / sizeof *others; ++i) {
        efl_loss_config cfg;
        efl_loss_config_init_mode(&cfg, others[i].C, others[i].mode);
        cfg.gamma = others[i].gamma;
        cfg.alpha = others[i].alpha;
        cfg.scale_factor = others[i].s;
        cfg.mu = others[i].mu;
        cfg.loss_weight = others[i].loss_weight;
        cfg.ignore_index = others[i].ignore;
        cfg.labels = others[i].labels;
        efl_loss *other = tu_loss(&E, &cfg);
        write_large_state(other, others[i].C, 7);
        CHECK_STATUS(efl_loss_save_checkpoint(other, E.queue, path), EFL_OK);
        if (others[i].want != EFL_OK) {
            expect_refused(f.loss, 3, path, others[i].want, others[i].what);
        } else {
            snapshot a, b;
            take(other, 3, &a);
            CHECK_STATUS(efl_loss_load_checkpoint(f.loss, E.queue, path), EFL_OK);
            take(f.loss, 3, &b);
            CHECK_MSG(tu_state_equal_bits(&a.st, &b.st), "%s: state not loaded", others[i].what);
            drop(&a);
            drop(&b);
        }
        efl_loss_destroy(other);
    }
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

static void test_io_and_arguments(void)
{
    tu_begin("missing files, bad arguments, focal loss");
    fault_fixture f;
    fault_setup(&f);
    char path[512];
    path_in_dir(path, sizeof path, "does-not-exist.ckpt");
    expect_refused(f.loss, 3, path, EFL_ERROR_IO, "a missing file");
    expect_refused(f.loss, 3, DIR_, EFL_ERROR_IO, "a folder");
    CHECK_STATUS(efl_loss_load_checkpoint(NULL, E.queue, path), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_load_checkpoint(f.loss, E.queue, NULL), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_load_checkpoint(f.loss, NULL, path), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_save_checkpoint(f.loss, E.queue, NULL), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_save_checkpoint(NULL, E.queue, path), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_import_checkpoint(f.loss, E.queue, NULL, f.size), EFL_ERROR_NULL_BUFFER);
    CHECK_STATUS(efl_loss_export_checkpoint(f.loss, E.queue, f.good, NULL), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_load_checkpoint_host(NULL, path), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_loss_save_checkpoint_host(NULL, path), EFL_ERROR_NULL_HANDLE);
    expect_refused(f.loss, 3, path, EFL_ERROR_IO, "after the argument checks"); /* and nothing changed */

    /* focal loss keeps no state: every state and checkpoint call says so */
    efl_loss *focal = make_loss(3, EFL_MODE_FOCAL, EFL_ACCUMULATE_AUTO);
    double v[3] = {0.0, 0.0, 1.0};
    size_t size = f.size;
    path_in_dir(path, sizeof path, "focal.ckpt");
    CHECK_STATUS(efl_loss_save_checkpoint(focal, E.queue, path), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_save_checkpoint_host(focal, path), EFL_ERROR_INVALID_MODE);
    CHECK(access(path, F_OK) != 0);
    spit(path, f.good, f.size);
    CHECK_STATUS(efl_loss_load_checkpoint(focal, E.queue, path), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_load_checkpoint_host(focal, path), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_export_checkpoint(focal, E.queue, NULL, &size), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_import_checkpoint(focal, E.queue, f.good, f.size), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_read_state(focal, E.queue, v, v, v), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_write_state(focal, E.queue, v, v, v), EFL_ERROR_INVALID_MODE);
    CHECK_STATUS(efl_loss_reset_state(focal, E.queue), EFL_ERROR_INVALID_MODE);
    efl_loss_destroy(focal);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

/* ------------------------------------------------------------ atomic saves */
static void test_atomic_save(void)
{
    tu_begin("saves: atomic, nothing left behind, old file kept on failure");
    fault_fixture f;
    fault_setup(&f);
    char path[512], nowhere[512];
    path_in_dir(path, sizeof path, "atomic.ckpt");
    path_in_dir(nowhere, sizeof nowhere, "no-such-folder/x.ckpt");

    CHECK_STATUS(efl_loss_save_checkpoint(f.loss, E.queue, nowhere), EFL_ERROR_IO);
    CHECK(access(nowhere, F_OK) != 0);

    /* over an existing checkpoint: the new one replaces it whole */
    spit(path, f.good, f.size);
    CHECK_STATUS(efl_loss_save_checkpoint_host(f.loss, path), EFL_OK);
    size_t size = 0, mine_size = 0;
    unsigned char *now = slurp(path, &size), *mine = export_bytes(f.loss, &mine_size);
    CHECK(now && size == mine_size && memcmp(now, mine, size) == 0);
    CHECK_MSG(count_temporaries() == 0, "a temporary file was left");

    /* a save that cannot rename (the target is a folder) removes its temporary file */
    char folder[512];
    path_in_dir(folder, sizeof folder, "a-folder");
    CHECK(mkdir(folder, 0700) == 0);
    CHECK_STATUS(efl_loss_save_checkpoint(f.loss, E.queue, folder), EFL_ERROR_IO);
    CHECK_MSG(count_temporaries() == 0, "a failed save left its temporary file");
    rmdir(folder);

    /* the host form loads what the queue form saved, and the old file stays readable */
    efl_loss *fresh = make_loss(3, EFL_MODE_EFL, EFL_ACCUMULATE_AUTO);
    CHECK_STATUS(efl_loss_load_checkpoint_host(fresh, path), EFL_OK);
    size_t back_size = 0;
    unsigned char *back = export_bytes(fresh, &back_size);
    CHECK(back_size == mine_size && memcmp(back, mine, back_size) == 0);
    free(back);
    free(now);
    free(mine);
    efl_loss_destroy(fresh);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

/* ------------------------------------------------------------ special files */
/* A load that must be refused with EFL_ERROR_IO at once: an open() that blocks (a FIFO without
 * a writer) ends the test by SIGALRM after 10 s instead of hanging it. */
static void expect_refused_promptly(efl_loss *loss, uint32_t C, const char *path, const char *what)
{
    snapshot before, after;
    take(loss, C, &before);
    alarm(10);
    const efl_status got = efl_loss_load_checkpoint(loss, E.queue, path);
    alarm(0);
    CHECK_MSG(got == EFL_ERROR_IO, "%s: got %s, want EFL_ERROR_IO", what, efl_status_string(got));
    take(loss, C, &after);
    CHECK_MSG(same(&before, &after), "%s: the state changed", what);
    drop(&before);
    drop(&after);
}

static void test_special_files(void)
{
    tu_begin("a FIFO, a folder, a device: refused at once, state untouched");
    fault_fixture f;
    fault_setup(&f);
    char fifo[512];
    path_in_dir(fifo, sizeof fifo, "fifo.ckpt");
    if (!CHECK(mkfifo(fifo, 0600) == 0))
        tu_fatal(__FILE__, __LINE__, "mkfifo");
    expect_refused_promptly(f.loss, 3, fifo, "a FIFO without a writer");
    expect_refused_promptly(f.loss, 3, DIR_, "a folder");
    expect_refused_promptly(f.loss, 3, "/dev/null", "a character device");
    /* a save replaces the FIFO with a checkpoint (rename), and that one loads */
    CHECK_STATUS(efl_loss_save_checkpoint(f.loss, E.queue, fifo), EFL_OK);
    struct stat st;
    CHECK(stat(fifo, &st) == 0 && S_ISREG(st.st_mode));
    CHECK_STATUS(efl_loss_load_checkpoint(f.loss, E.queue, fifo), EFL_OK);
    remove(fifo);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

/* ------------------------------------------------------------ temporaries of killed saves */

static void plant_temporary(char *out, size_t size, const char *base, long pid)
{
    char name[256];
    snprintf(name, sizeof name, "%s.tmp.%ld.0", base, pid);
    path_in_dir(out, size, name);
    spit(out, "half a checkpoint", 17);
}

static void test_stale_temporaries(void)
{
    tu_begin("a save removes its path's temporaries of dead processes, never a live one's");
    fault_fixture f;
    fault_setup(&f);
    const long dead = tu_dead_pid(), live = (long)getppid();
    CHECK_MSG(kill((pid_t)dead, 0) == -1, "pid %ld still in use", dead);
    char path[512], stale[512], busy[512], other[512];
    path_in_dir(path, sizeof path, "stale.ckpt");
    plant_temporary(stale, sizeof stale, "stale.ckpt", dead);
    plant_temporary(busy, sizeof busy, "stale.ckpt", live);
    plant_temporary(other, sizeof other, "stale.ckpt2", dead); /* another path's: not ours to sweep */
    CHECK_STATUS(efl_loss_save_checkpoint(f.loss, E.queue, path), EFL_OK);
    CHECK_MSG(access(stale, F_OK) != 0, "%s (dead pid) was not removed", stale);
    CHECK_MSG(access(busy, F_OK) == 0, "%s (live pid %ld) was removed", busy, live);
    CHECK_MSG(access(other, F_OK) == 0, "%s (another path's) was removed", other);
    CHECK_STATUS(efl_loss_load_checkpoint(f.loss, E.queue, path), EFL_OK);
    remove(busy);
    remove(other);
    remove(path);
    CHECK(count_temporaries() == 0);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

/* ------------------------------------------------------------ memory form */
static void test_export_import(void)
{
    tu_begin("export/import: the file's bytes, sizes");
    fault_fixture f;
    fault_setup(&f);
    CHECK(f.size == 60 + 36 * 3);
    size_t size = 1;
    unsigned char small[8] = {0};
    CHECK_STATUS(efl_loss_export_checkpoint(f.loss, E.queue, small, &size), EFL_ERROR_BUFFER_TOO_SMALL);
    CHECK(size == 1);
    size = 0;
    CHECK_STATUS(efl_loss_export_checkpoint(f.loss, E.queue, NULL, &size), EFL_OK);
    CHECK(size == f.size);

    char path[512];
    path_in_dir(path, sizeof path, "memory.ckpt");
    CHECK_STATUS(efl_loss_save_checkpoint(f.loss, E.queue, path), EFL_OK);
    size_t file_size = 0, mem_size = 0;
    unsigned char *file = slurp(path, &file_size), *mem = export_bytes(f.loss, &mem_size);
    CHECK(file && file_size == mem_size && memcmp(file, mem, mem_size) == 0);

    /* import: the good checkpoint in, then its bytes come out again */
    CHECK_STATUS(efl_loss_import_checkpoint(f.loss, E.queue, f.good, f.size), EFL_OK);
    size_t again_size = 0;
    unsigned char *again = export_bytes(f.loss, &again_size);
    CHECK(again_size == f.size && memcmp(again, f.good, f.size) == 0);
    /* and a refused import changes nothing */
    snapshot before, after;
    take(f.loss, 3, &before);
    CHECK_STATUS(efl_loss_import_checkpoint(f.loss, E.queue, mem, mem_size - 1), EFL_ERROR_CHECKPOINT_CORRUPT);
    take(f.loss, 3, &after);
    CHECK(same(&before, &after));
    drop(&before);
    drop(&after);
    free(again);
    free(file);
    free(mem);
    free(f.good);
    efl_loss_destroy(f.loss);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    snprintf(DIR_, sizeof DIR_, "%s/efl-ckpt-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(DIR_))
        tu_fatal(__FILE__, __LINE__, "mkdtemp");
    printf("device: %s (%s)\n", E.device_name, E.has_fp64 ? "float64 totals" : "float pairs");
    resume_case("resume == straight (auto accumulators)", EFL_MODE_EFL, EFL_ACCUMULATE_AUTO, 0, 11);
    resume_case("resume == straight (auto, large totals)", EFL_MODE_EFL, EFL_ACCUMULATE_AUTO, 1, 12);
    resume_case("resume == straight (float pairs)", EFL_MODE_EFL, EFL_ACCUMULATE_FLOAT_PAIRS, 0, 13);
    resume_case("resume == straight (float pairs, large totals)", EFL_MODE_EFL, EFL_ACCUMULATE_FLOAT_PAIRS, 1, 14);
    resume_case("resume == straight (EQLv2)", EFL_MODE_EQLV2, EFL_ACCUMULATE_AUTO, 0, 15);
    test_residuals();
    test_eqlv2_round_trip();
    test_truncated_and_flipped();
    test_planted_fields();
    test_other_configurations();
    test_io_and_arguments();
    test_atomic_save();
    test_special_files();
    test_stale_temporaries();
    test_export_import();
    remove_dir();
    tu_env_free(&E);
    return tu_exit_code();
}
