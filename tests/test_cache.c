/*
 * The disk cache of compiled programs (lib/disk_cache.c), in a folder of its own
 * (EFL_CACHE_DIR): a second context loads what the first compiled, with bitwise the same
 * results; a truncated, a corrupted and a foreign entry are each detected and replaced by a
 * compile from source (and the next context loads the replacement); a folder writable by
 * others, or owned by another user, is refused and compilation goes on; EFL_CACHE_DIR=off
 * writes nothing; a new folder is created mode 0700. A FIFO planted at an entry's name does
 * not block the context (an alarm fails the test instead of letting it hang): it is logged,
 * the program compiled, and the entry stored over it. A store removes the entry's temporaries
 * left by a dead process, never a live process's.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "test_util.h"

static tu_env E;
static char DIR_[512];

enum { N = 300, C = 40 };
static float X[N * C];
static int32_t Y[N];

/* A fresh context (fresh in-memory cache), one step; returns its log (caller frees) and
 * writes the step's loss and gradient. */
static char *fresh_step(float *loss_out, float *grad)
{
    efl_context *ctx = NULL;
    REQUIRE_OK(efl_context_create(E.cl, E.dev, &ctx));
    efl_loss_config cfg;
    efl_loss_config_init(&cfg, C);
    efl_loss *loss = NULL;
    efl_status st = efl_loss_create(ctx, &cfg, &loss);
    CHECK_STATUS(st, EFL_OK);
    if (st == EFL_OK)
        CHECK_STATUS(efl_loss_step_host(loss, X, Y, N, 7.0f, EFL_REDUCTION_MEAN, loss_out, grad), EFL_OK);
    size_t len = efl_context_log(ctx, NULL, 0);
    char *log = malloc(len + 1);
    efl_context_log(ctx, log, len + 1);
    efl_loss_destroy(loss);
    efl_context_destroy(ctx);
    return log;
}

/* The one entry in the folder (the float32 program); 0 if none. */
static int entry(char *path, size_t size)
{
    DIR *d = opendir(DIR_);
    int found = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;)
        if (strstr(e->d_name, ".bin") && !strstr(e->d_name, ".bin.")) {
            snprintf(path, size, "%s/%s", DIR_, e->d_name);
            found = 1;
        }
    if (d)
        closedir(d);
    return found;
}

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void expect(const char *log, const char *what, const char *case_name)
{
    CHECK_MSG(strstr(log, what) != NULL, "%s: the log lacks \"%s\":\n%s", case_name, what, log);
}


/* "<entry>.tmp.<pid>.0", as a store killed before its rename leaves it */
static void plant_temporary(char *out, size_t size, const char *entry_path, long pid)
{
    snprintf(out, size, "%s.tmp.%ld.0", entry_path, pid);
    FILE *f = fopen(out, "wb");
    if (!f || fputs("half an entry", f) < 0 || fclose(f) != 0)
        tu_fatal(__FILE__, __LINE__, out);
}

/* A FIFO at the entry's name: the context must not block on it (its reader would wait for a
 * writer forever, with the context's lock held). The alarm turns a regression into a failure. */
static void test_fifo_entry(const char *path, float l0, const float *g0)
{
    static float g1[N * C];
    float l1;
    char stale[1100], busy[1100];
    tu_begin("a FIFO at the entry's name: logged, compiled, replaced");
    CHECK(unlink(path) == 0);
    if (!CHECK(mkfifo(path, 0600) == 0))
        tu_fatal(__FILE__, __LINE__, "mkfifo");
    const long live = (long)getppid();
    plant_temporary(stale, sizeof stale, path, tu_dead_pid());
    plant_temporary(busy, sizeof busy, path, live);
    alarm(60); /* time for a compile from source on a loaded machine, not for a wait on the FIFO */
    char *log = fresh_step(&l1, g1);
    alarm(0);
    expect(log, "not a regular file", "FIFO entry");
    expect(log, ": stored", "FIFO entry");
    free(log);
    CHECK(l0 == l1 && memcmp(g0, g1, sizeof g1) == 0);
    struct stat st;
    CHECK_MSG(stat(path, &st) == 0 && S_ISREG(st.st_mode), "the FIFO was not replaced by an entry");
    CHECK_MSG(access(stale, F_OK) != 0, "%s (dead pid) was not removed", stale);
    CHECK_MSG(access(busy, F_OK) == 0, "%s (live pid %ld) was removed", busy, live);
    remove(busy);
    log = fresh_step(&l1, g1);
    expect(log, ": loaded", "after the FIFO");
    free(log);
    tu_end();
}

int main(void)
{
    tu_env_init(&E);
    snprintf(DIR_, sizeof DIR_, "/tmp/efl-test-cache-%ld/entries", (long)getpid());
    setenv("EFL_CACHE_DIR", DIR_, 1);
    tu_rng r = {99};
    tu_label_opts o = tu_default_label_opts();
    tu_make_logits(&r, X, N * C);
    tu_make_labels(&r, Y, N, C, &o);
    static float g0[N * C], g1[N * C];
    float l0, l1;
    char path[1024];

    tu_begin("compile, store, then load with the same results");
    char *log = fresh_step(&l0, g0);
    expect(log, ": stored", "first context");
    free(log);
    struct stat st;
    CHECK_MSG(stat(DIR_, &st) == 0 && (st.st_mode & 0777) == 0700, "folder mode %o", (unsigned)(st.st_mode & 0777));
    log = fresh_step(&l1, g1);
    expect(log, ": loaded", "second context");
    free(log);
    CHECK(l0 == l1 && memcmp(g0, g1, sizeof g0) == 0);
    tu_end();

    CHECK(entry(path, sizeof path));
    const long full = file_size(path);
    static const struct {
        const char *name, *why;
    } bad[] = {{"truncated entry", "truncated"}, {"corrupted entry", "corrupted"}, {"foreign entry", "foreign"}};
    for (int k = 0; k < 3; ++k) {
        tu_begin(bad[k].name);
        FILE *f = fopen(path, "r+b");
        if (!f)
            tu_fatal(__FILE__, __LINE__, path);
        if (k == 0) {
            CHECK(truncate(path, full / 2) == 0);
        } else {
            /* k = 1: a byte of the binary (the end of the file); k = 2: a byte of the key */
            fseek(f, k == 1 ? full - 100 : 40, SEEK_SET);
            int c = fgetc(f);
            fseek(f, k == 1 ? full - 100 : 40, SEEK_SET);
            fputc(c ^ 0x20, f);
        }
        fclose(f);
        log = fresh_step(&l1, g1);
        expect(log, bad[k].why, bad[k].name);
        expect(log, ": stored", bad[k].name); /* replaced */
        free(log);
        CHECK(l0 == l1 && memcmp(g0, g1, sizeof g0) == 0);
        CHECK(file_size(path) == full);
        log = fresh_step(&l1, g1);
        expect(log, ": loaded", bad[k].name);
        free(log);
        tu_end();
    }

    test_fifo_entry(path, l0, g0);

    tu_begin("a folder writable by others is refused");
    CHECK(chmod(DIR_, 0777) == 0);
    log = fresh_step(&l1, g1);
    expect(log, "writable by group or others", "mode 0777");
    free(log);
    CHECK(l0 == l1);
    CHECK(chmod(DIR_, 0700) == 0);
    tu_end();

    if (geteuid() == 0) {
        tu_begin("a folder owned by another user is refused");
        CHECK(chown(DIR_, 65534, 65534) == 0);
        log = fresh_step(&l1, g1);
        expect(log, "owned by another user", "chown nobody");
        free(log);
        CHECK(l0 == l1);
        CHECK(chown(DIR_, 0, 0) == 0);
        tu_end();
    } else {
        printf("SKIP a folder owned by another user: needs root to chown\n");
    }

    tu_begin("EFL_CACHE_DIR=off reads and writes nothing");
    CHECK(unlink(path) == 0);
    setenv("EFL_CACHE_DIR", "off", 1);
    log = fresh_step(&l1, g1);
    CHECK_MSG(strstr(log, "disk cache") == NULL, "log mentions the cache:\n%s", log);
    free(log);
    CHECK(l0 == l1);
    CHECK(!entry(path, sizeof path));
    tu_end();

    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf /tmp/efl-test-cache-%ld", (long)getpid());
    if (system(cmd) != 0)
        printf("note: could not remove %s\n", DIR_);
    tu_env_free(&E);
    return tu_exit_code();
}
