/*
 * efl_context_options (lib/options.c): the disk cache folder and the launch parameters given per
 * context instead of by EFL_CACHE_DIR and EFL_TUNE.
 *   - cache_dir: the entries land in that folder, not in EFL_CACHE_DIR's; the string is copied at
 *     creation; "" reads and writes no entry anywhere.
 *   - tune: wins over EFL_TUNE (seen in the program's build options in the context log); ""
 *     gives the library's own choice even with EFL_TUNE set; a string that is not EFL_TUNE's
 *     syntax, or a value no device takes, is EFL_ERROR_INVALID_PARAMETER with nothing created.
 *   - NULL options and efl_context_options_init's defaults behave as efl_context_create; a smaller
 *     size (an older caller) leaves the fields it lacks at their defaults; a larger one is taken
 *     when its unknown tail is zero.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_util.h"

static tu_env E;
static char ROOT[256], ENV_DIR[320], OPT_DIR[320];

enum { N = 200, C = 40 };
static float X[N * C];
static int32_t Y[N];

/* The tunes of this test: EFL_TUNE's (a GPU's shape) and the option's (a CPU's unrolled one). */
#define ENV_TUNE "vw=1,barrier=0,wgx=32,unroll=3"
#define OPT_TUNE "vw=4, barrier=0,wgx=1,unroll=2,rows=37"

/* Files named *.bin in dir (0 when it does not exist). */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    int count = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;)
        count += strstr(e->d_name, ".bin") != NULL && !strstr(e->d_name, ".bin.");
    if (d)
        closedir(d);
    return count;
}

static char *context_log(const efl_context *ctx)
{
    const size_t len = efl_context_log(ctx, NULL, 0);
    char *log = tu_xmalloc(len + 1);
    efl_context_log(ctx, log, len + 1);
    return log;
}

/* One loss and one host step on ctx, then ctx destroyed; returns its log (caller frees). */
static char *step_and_destroy(efl_context *ctx)
{
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = NULL;
    static float grad[N * C];
    float l = 0.0f;
    efl_status st = efl_loss_create(ctx, &cfg, &loss);
    CHECK_STATUS(st, EFL_OK);
    if (st == EFL_OK)
        CHECK_STATUS(efl_loss_step_host(loss, X, Y, N, 7.0f, EFL_REDUCTION_MEAN, &l, grad), EFL_OK);
    CHECK(tu_all_finite_f32(&l, 1) && tu_all_finite_f32(grad, N * C));
    char *log = context_log(ctx);
    efl_loss_destroy(loss);
    efl_context_destroy(ctx);
    return log;
}

static char *with_options(const efl_context_options *o)
{
    efl_context *ctx = NULL;
    REQUIRE_OK(efl_context_create_with_options(E.cl, E.dev, o, &ctx));
    return step_and_destroy(ctx);
}

/* The launch shape of the log's programs: the -D defines a tune sets. */
static int log_has_shape(const char *log, unsigned vw, unsigned wgx, unsigned unroll, int barrier)
{
    char want[4][48];
    snprintf(want[0], sizeof want[0], "-DEFL_VW=%u ", vw);
    snprintf(want[1], sizeof want[1], "-DEFL_WGX=%u ", wgx);
    snprintf(want[2], sizeof want[2], "-DEFL_UNROLL=%u ", unroll);
    snprintf(want[3], sizeof want[3], "-DEFL_ROW_BARRIER=%d ", barrier);
    const char *ready = strstr(log, "program ready: ");
    int ok = ready != NULL;
    for (int i = 0; ok && i < 4; ++i)
        ok = strstr(ready, want[i]) != NULL;
    CHECK_MSG(ok, "the log lacks vw=%u wgx=%u unroll=%u barrier=%d:\n%s", vw, wgx, unroll, barrier, log);
    return ok;
}

/* The "program ready: ..." line of a log (static copy). */
static const char *program_line(const char *log)
{
    static char line[2][1024];
    static int which;
    const char *p = strstr(log, "program ready: ");
    which ^= 1;
    snprintf(line[which], sizeof line[which], "%.*s", p ? (int)strcspn(p, "\n") : 0, p ? p : "");
    return line[which];
}

static void test_cache_dir(void)
{
    tu_begin("cache_dir: entries in the option's folder, not EFL_CACHE_DIR's; copied at creation");
    setenv("EFL_CACHE_DIR", ENV_DIR, 1);
    char dir[sizeof OPT_DIR];
    snprintf(dir, sizeof dir, "%s", OPT_DIR);
    efl_context_options o;
    efl_context_options_init(&o);
    o.cache_dir = dir;
    efl_context *ctx = NULL;
    REQUIRE_OK(efl_context_create_with_options(E.cl, E.dev, &o, &ctx));
    memset(dir, 'x', sizeof dir - 1); /* the caller's string need not outlive the call */
    char *log = step_and_destroy(ctx);
    CHECK_MSG(entries(OPT_DIR) >= 1, "no entry in %s:\n%s", OPT_DIR, log);
    CHECK_MSG(entries(ENV_DIR) == 0, "an entry in EFL_CACHE_DIR %s", ENV_DIR);
    CHECK_MSG(strstr(log, OPT_DIR) != NULL, "the log does not name %s:\n%s", OPT_DIR, log);
    free(log);
    o.cache_dir = OPT_DIR;
    log = with_options(&o);
    CHECK_MSG(strstr(log, ": loaded") != NULL, "a second context did not load the entry:\n%s", log);
    free(log);
    tu_end();

    tu_begin("cache_dir \"\": no entry anywhere, the cache unmentioned");
    o.cache_dir = "";
    log = with_options(&o);
    CHECK_MSG(strstr(log, "disk cache") == NULL, "the log mentions the cache:\n%s", log);
    free(log);
    CHECK(entries(ENV_DIR) == 0);
    tu_end();

    tu_begin("no cache_dir: EFL_CACHE_DIR as before");
    log = with_options(NULL);
    CHECK_MSG(entries(ENV_DIR) >= 1, "no entry in EFL_CACHE_DIR %s:\n%s", ENV_DIR, log);
    free(log);
    unsetenv("EFL_CACHE_DIR");
    tu_end();
}

static void test_tune(void)
{
    efl_context_options o;
    efl_context_options_init(&o);
    o.cache_dir = OPT_DIR;

    tu_begin("tune wins over EFL_TUNE");
    setenv("EFL_TUNE", ENV_TUNE, 1);
    char tune[] = OPT_TUNE;
    o.tune = tune;
    efl_context *ctx = NULL;
    REQUIRE_OK(efl_context_create_with_options(E.cl, E.dev, &o, &ctx));
    tune[3] = '8'; /* copied at creation */
    char *log = step_and_destroy(ctx);
    log_has_shape(log, 4, 1, 2, 0);
    CHECK_MSG(strstr(log, "tune \"" OPT_TUNE "\"") != NULL, "no options line:\n%s", log);
    free(log);
    tu_end();

    tu_begin("no options, and the defaults of efl_context_options_init: EFL_TUNE");
    log = with_options(NULL);
    log_has_shape(log, 1, 32, 3, 0);
    CHECK_MSG(strstr(log, "options:") == NULL, "NULL options logged options:\n%s", log);
    free(log);
    efl_context_options d;
    efl_context_options_init(&d);
    CHECK(d.size == sizeof d && d.cache_dir == NULL && d.tune == NULL);
    log = with_options(&d);
    log_has_shape(log, 1, 32, 3, 0);
    CHECK_MSG(strstr(log, "options:") == NULL, "default options logged options:\n%s", log);
    free(log);
    efl_context *plain = NULL;
    REQUIRE_OK(efl_context_create(E.cl, E.dev, &plain));
    log = step_and_destroy(plain);
    log_has_shape(log, 1, 32, 3, 0);
    free(log);
    tu_end();

    tu_begin("tune \"\": the library's own choice, EFL_TUNE set or not");
    o.tune = "";
    log = with_options(&o);
    char set_line[1024];
    snprintf(set_line, sizeof set_line, "%s", program_line(log));
    free(log);
    unsetenv("EFL_TUNE");
    log = with_options(NULL);
    CHECK_MSG(set_line[0] && strcmp(set_line, program_line(log)) == 0, "tune \"\": %s\nno EFL_TUNE: %s", set_line,
              program_line(log));
    CHECK_MSG(!strstr(set_line, "-DEFL_UNROLL=3 "), "tune \"\" took EFL_TUNE's unroll: %s", set_line);
    free(log);
    tu_end();
}

static void test_bad_tune(void)
{
    static const char *const bad[] = {"vw=3",    "vw=2",     "foo=1",       "vw",        "vw=",       "=4",
                                      "vw=8,",   ",",        " ",           "unroll=0",  "unroll=17", "barrier=2",
                                      "wgx=0",   "rows=0",   "vw=-1",       "vw=+4",     "vw=4x",     "vw=8;wgx=2",
                                      "VW=8",    "vw==8",    "rows=4294967296", "vw=8,,wgx=2"};
    tu_begin("a bad tune: EFL_ERROR_INVALID_PARAMETER, nothing created");
    efl_context_options o;
    efl_context_options_init(&o);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; ++i) {
        o.tune = bad[i];
        efl_context *ctx = (efl_context *)&o; /* must come back NULL */
        CHECK_MSG(efl_context_create_with_options(E.cl, E.dev, &o, &ctx) == EFL_ERROR_INVALID_PARAMETER && !ctx,
                  "tune \"%s\" was not refused", bad[i]);
        ctx = (efl_context *)&o;
        CHECK_MSG(efl_context_create_default_with_options(&o, &ctx) == EFL_ERROR_INVALID_PARAMETER && !ctx,
                  "tune \"%s\" was not refused by the default context", bad[i]);
    }
    static const char *const good[] = {"", "rows=64", "vw=16 , wgx = 76,unroll=8,barrier=1,rows=256", "vw=08"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; ++i) {
        o.tune = good[i];
        efl_context *ctx = NULL;
        CHECK_MSG(efl_context_create_with_options(E.cl, E.dev, &o, &ctx) == EFL_OK && ctx, "tune \"%s\" refused",
                  good[i]);
        efl_context_destroy(ctx);
    }
    CHECK_STATUS(efl_context_create_with_options(E.cl, E.dev, NULL, NULL), EFL_ERROR_NULL_HANDLE);
    CHECK_STATUS(efl_context_create_default_with_options(NULL, NULL), EFL_ERROR_NULL_HANDLE);
    efl_context *ctx = (efl_context *)&o;
    CHECK_STATUS(efl_context_create_with_options(NULL, E.dev, NULL, &ctx), EFL_ERROR_NULL_HANDLE);
    CHECK(ctx == NULL);
    efl_context_options_init(NULL); /* ignored */
    tu_end();
}

static void test_sizes(void)
{
    tu_begin("sizes: an older caller's smaller struct, a newer one's larger, and nonsense");
    setenv("EFL_TUNE", ENV_TUNE, 1);
    efl_context_options o;
    efl_context_options_init(&o);
    o.cache_dir = "";
    o.tune = "not a tune"; /* beyond an older caller's size: never read */
    o.size = (uint32_t)offsetof(efl_context_options, tune);
    char *log = with_options(&o);
    log_has_shape(log, 1, 32, 3, 0); /* tune at its default: EFL_TUNE */
    CHECK_MSG(strstr(log, "disk cache") == NULL, "cache_dir \"\" not honoured at the smaller size:\n%s", log);
    free(log);

    o.size = sizeof(uint32_t); /* the size alone: every field at its default */
    efl_context *ctx = NULL;
    CHECK_STATUS(efl_context_create_with_options(E.cl, E.dev, &o, &ctx), EFL_OK);
    efl_context_destroy(ctx);
    for (uint32_t s = 0; s < sizeof(uint32_t); ++s) {
        o.size = s;
        ctx = (efl_context *)&o;
        CHECK_MSG(efl_context_create_with_options(E.cl, E.dev, &o, &ctx) == EFL_ERROR_INVALID_PARAMETER && !ctx,
                  "size %u accepted", (unsigned)s);
    }

    struct {
        efl_context_options o;
        uint64_t later[2]; /* fields of a newer efl.h */
    } newer;
    memset(&newer, 0, sizeof newer);
    efl_context_options_init(&newer.o);
    newer.o.size = sizeof newer;
    newer.o.tune = OPT_TUNE;
    newer.o.cache_dir = "";
    log = with_options(&newer.o);
    log_has_shape(log, 4, 1, 2, 0);
    free(log);
    newer.later[1] = 1; /* a newer field set: this library cannot honour it */
    ctx = (efl_context *)&o;
    CHECK_STATUS(efl_context_create_with_options(E.cl, E.dev, &newer.o, &ctx), EFL_ERROR_INVALID_PARAMETER);
    CHECK(ctx == NULL);
    unsetenv("EFL_TUNE");
    tu_end();
}

static void test_default_context(void)
{
    tu_begin("efl_context_create_default_with_options: the same device, the options applied");
    efl_context_options o;
    efl_context_options_init(&o);
    o.cache_dir = "";
    o.tune = OPT_TUNE;
    efl_context *ctx = NULL;
    REQUIRE_OK(efl_context_create_default_with_options(&o, &ctx));
    CHECK(efl_context_cl_device(ctx) == E.dev);
    char *log = context_log(ctx);
    CHECK_MSG(strstr(log, "picked ") != NULL, "no device pick in the log:\n%s", log);
    free(log);
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = NULL;
    CHECK_STATUS(efl_loss_create(ctx, &cfg, &loss), EFL_OK);
    float l = 0.0f;
    CHECK_STATUS(efl_loss_step_host(loss, X, Y, N, 7.0f, EFL_REDUCTION_MEAN, &l, NULL), EFL_OK);
    log = context_log(ctx);
    log_has_shape(log, 4, 1, 2, 0);
    CHECK_MSG(strstr(log, "disk cache") == NULL, "the log mentions the cache:\n%s", log);
    free(log);
    efl_loss_destroy(loss);
    efl_context_destroy(ctx);
    ctx = NULL;
    REQUIRE_OK(efl_context_create_default_with_options(NULL, &ctx));
    CHECK(efl_context_cl_device(ctx) == E.dev);
    efl_context_destroy(ctx);
    tu_end();
}

static void remove_folder(const char *dir)
{
    DIR *d = opendir(dir);
    char path[1024];
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        remove(path);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

int main(void)
{
    tu_env_init(&E);
    unsetenv("EFL_TUNE");
    snprintf(ROOT, sizeof ROOT, "/tmp/efl-test-options-%ld", (long)getpid());
    snprintf(ENV_DIR, sizeof ENV_DIR, "%s/env", ROOT);
    snprintf(OPT_DIR, sizeof OPT_DIR, "%s/opt", ROOT);
    if (mkdir(ROOT, 0700) != 0)
        tu_fatal(__FILE__, __LINE__, ROOT);
    tu_rng r = {7};
    tu_label_opts lo = tu_default_label_opts();
    tu_make_logits(&r, X, N * C);
    tu_make_labels(&r, Y, N, C, &lo);

    test_cache_dir();
    test_tune();
    test_bad_tune();
    test_sizes();
    test_default_context();

    remove_folder(ENV_DIR);
    remove_folder(OPT_DIR);
    rmdir(ROOT);
    tu_env_free(&E);
    return tu_exit_code();
}
