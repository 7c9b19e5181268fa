#define _POSIX_C_SOURCE 200809L
/* Compiled programs on disk, so a new process does not pay the compile again.
 *
 * Where: EFL_CACHE_DIR, else $XDG_CACHE_HOME/efl, else $HOME/.cache/efl; EFL_CACHE_DIR=off turns
 * it off. The folder is created mode 0700. A binary for a CPU device is native code that the
 * process will run, so a folder owned by another user, or writable by group or others, is
 * refused (logged; compilation goes on without the cache).
 *
 * An entry is one file named by a hash of its key; the key is the full text of what the binary
 * depends on (library version, platform name and version, device name, driver version, the
 * build options and a hash of the kernel source), and is stored in the entry and compared
 * whole, so a hash collision or a foreign file cannot pass for ours. Layout:
 *   "EFLCACH1" | u32 key length | u64 binary length | u64 binary checksum | key | binary
 * A truncated, corrupted or foreign entry, or a binary the driver refuses, is logged and
 * replaced by a compile from source. So is anything at an entry's name that is not a regular
 * file: entries are read with the context's lock held, and a FIFO there must not block every
 * thread, so the reader (lib/file_io.c) never waits on one.
 *
 * Entries are written to a temporary "<entry>.tmp.<pid>.<n>", flushed and renamed into place,
 * so a reader never sees half an entry. A store first removes the temporaries of the same
 * entry that dead processes left behind (killed before their rename); a live process's
 * temporary is never touched (lib/file_io.c). */
#include "disk_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_io.h"

#ifndef _WIN32
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#define MAGIC "EFLCACH1"
#define HEADER_BYTES (8 + 4 + 8 + 8)
/* Entries are a few hundred KB; anything larger is not one of ours. */
#define MAX_ENTRY_BYTES ((size_t)64 << 20)

uint64_t efl_fnv1a64(const void *data, size_t len, uint64_t h)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; ++i) {
        h ^= p[i];
        h *= 0x100000001B3ULL;
    }
    return h;
}

#ifdef _WIN32
int efl_disk_cache_dir(efl_context *ctx, char *dir, size_t size)
{
    (void)ctx, (void)dir, (void)size;
    return 0; /* not implemented on Windows: always compile */
}
cl_program efl_disk_cache_load(efl_context *ctx, const char *dir, const char *key, const char *options)
{
    (void)ctx, (void)dir, (void)key, (void)options;
    return NULL;
}
void efl_disk_cache_store(efl_context *ctx, const char *dir, const char *key, cl_program prog)
{
    (void)ctx, (void)dir, (void)key, (void)prog;
}
#else

/* mkdir -p, the last component with mode 0700 */
static int make_dirs(char *path)
{
    for (char *p = path + 1; *p; ++p) {
        if (*p != '/')
            continue;
        *p = '\0';
        const int r = mkdir(path, 0755);
        *p = '/';
        if (r != 0 && errno != EEXIST)
            return -1;
    }
    return mkdir(path, 0700) == 0 || errno == EEXIST ? 0 : -1;
}

int efl_disk_cache_dir(efl_context *ctx, char *dir, size_t size)
{
    if (ctx->cache_dir && !*ctx->cache_dir)
        return 0; /* efl_context_options.cache_dir "": off */
    const char *env = ctx->cache_dir ? ctx->cache_dir : getenv("EFL_CACHE_DIR");
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    int n;
    if (env && *env) {
        if (!ctx->cache_dir && strcmp(env, "off") == 0)
            return 0;
        n = snprintf(dir, size, "%s", env);
    } else if (xdg && *xdg) {
        n = snprintf(dir, size, "%s/efl", xdg);
    } else if (home && *home) {
        n = snprintf(dir, size, "%s/.cache/efl", home);
    } else {
        return 0;
    }
    if (n <= 0 || (size_t)n >= size - 64) /* room for the file names */
        return 0;
    if (make_dirs(dir) != 0) {
        efl_log_locked(ctx, "disk cache %s: cannot create it (%s); compiling without it", dir, strerror(errno));
        return 0;
    }
    struct stat st;
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        efl_log_locked(ctx, "disk cache %s: not a folder; compiling without it", dir);
        return 0;
    }
    if (st.st_uid != geteuid()) {
        efl_log_locked(ctx, "disk cache %s: refused, owned by another user (uid %u); compiling without it", dir,
                       (unsigned)st.st_uid);
        return 0;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        efl_log_locked(ctx, "disk cache %s: refused, writable by group or others (mode %o); compiling without it",
                       dir, (unsigned)(st.st_mode & 0777));
        return 0;
    }
    return 1;
}

static void entry_path(const char *dir, const char *key, char *path, size_t size)
{
    snprintf(path, size, "%s/%016llx.bin", dir,
             (unsigned long long)efl_fnv1a64(key, strlen(key), EFL_FNV_OFFSET));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; --i)
        v = v << 8 | p[i];
    return v;
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; ++i, v >>= 8)
        p[i] = (unsigned char)v;
}

/* What is wrong with an entry for `key`, or NULL if it is sound; *bin / *bin_len point into it. */
const char *efl_disk_cache_check_entry(const unsigned char *e, size_t len, const char *key, const unsigned char **bin,
                               size_t *bin_len)
{
    if (len < HEADER_BYTES || memcmp(e, MAGIC, 8) != 0)
        return len < HEADER_BYTES ? "truncated" : "not an efl cache entry";
    const uint32_t key_len = (uint32_t)e[8] | (uint32_t)e[9] << 8 | (uint32_t)e[10] << 16 | (uint32_t)e[11] << 24;
    const uint64_t blen = get_u64(e + 12), sum = get_u64(e + 20);
    /* sizes compared without a sum that could wrap (the fuzzer found that one) */
    if (key_len > len - HEADER_BYTES || blen != (uint64_t)(len - HEADER_BYTES - key_len))
        return "truncated or padded";
    if (key_len != strlen(key) || memcmp(e + HEADER_BYTES, key, key_len) != 0)
        return "built for something else (foreign key)";
    *bin = e + HEADER_BYTES + key_len;
    *bin_len = (size_t)blen;
    if (efl_fnv1a64(*bin, *bin_len, EFL_FNV_OFFSET) != sum)
        return "corrupted (checksum)";
    return NULL;
}

cl_program efl_disk_cache_load(efl_context *ctx, const char *dir, const char *key, const char *options)
{
    char path[1200];
    entry_path(dir, key, path, sizeof path);
    size_t len = 0;
    unsigned char *e = NULL;
    const efl_file_result r = efl_read_regular_file(path, MAX_ENTRY_BYTES, &e, &len);
    if (r == EFL_FILE_ABSENT)
        return NULL; /* no entry yet */
    if (r != EFL_FILE_OK) {
        const int err = errno;
        if (r == EFL_FILE_UNREADABLE)
            efl_log_locked(ctx, "disk cache %s: entry unreadable (%s); compiling from source", path, strerror(err));
        else
            efl_log_locked(ctx, "disk cache %s: entry %s; compiling from source", path, efl_file_result_string(r));
        return NULL;
    }
    const unsigned char *bin = NULL;
    size_t bin_len = 0;
    const char *why = efl_disk_cache_check_entry(e, len, key, &bin, &bin_len);
    cl_program prog = NULL;
    if (!why) {
        cl_int err = CL_SUCCESS, bst = CL_SUCCESS;
        prog = clCreateProgramWithBinary(ctx->context, 1, &ctx->device, &bin_len, &bin, &bst, &err);
        if (err == CL_SUCCESS && bst == CL_SUCCESS)
            err = clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
        else if (err == CL_SUCCESS)
            err = bst;
        if (err != CL_SUCCESS) {
            if (prog)
                clReleaseProgram(prog);
            prog = NULL;
            why = "refused by the driver";
        }
    }
    free(e);
    if (why)
        efl_log_locked(ctx, "disk cache %s: entry %s; compiling from source", path, why);
    else
        efl_log_locked(ctx, "disk cache %s: loaded", path);
    return prog;
}

void efl_disk_cache_store(efl_context *ctx, const char *dir, const char *key, cl_program prog)
{
    size_t bin_len = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof bin_len, &bin_len, NULL) != CL_SUCCESS ||
        bin_len == 0)
        return; /* a single-device program: one binary */
    const size_t key_len = strlen(key), total = HEADER_BYTES + key_len + bin_len;
    unsigned char *e = malloc(total);
    if (!e)
        return;
    unsigned char *bin = e + HEADER_BYTES + key_len;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) != CL_SUCCESS) {
        free(e);
        return;
    }
    memcpy(e, MAGIC, 8);
    for (int i = 0; i < 4; ++i)
        e[8 + i] = (unsigned char)(key_len >> (8 * i));
    put_u64(e + 12, bin_len);
    put_u64(e + 20, efl_fnv1a64(bin, bin_len, EFL_FNV_OFFSET));
    memcpy(e + HEADER_BYTES, key, key_len);

    char path[1200];
    entry_path(dir, key, path, sizeof path);
    /* 0600: native code for this user only (the folder is 0700 too) */
    if (efl_write_file_atomically(path, e, total, 0600) != EFL_OK)
        efl_log_locked(ctx, "disk cache %s: could not write the entry (%s)", path, strerror(errno));
    else
        efl_log_locked(ctx, "disk cache %s: stored", path);
    free(e);
}
#endif
