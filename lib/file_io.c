#define _POSIX_C_SOURCE 200809L
/* Whole files, read and written safely: the one reader and the one writer of the checkpoint
 * (checkpoint.c) and the disk cache (disk_cache.c).
 *
 * Reading. A path can name a FIFO, a device or a folder, by mistake or planted. open() blocks
 * on a FIFO until a writer comes, and the disk cache reads while the context's lock is held, so
 * one planted FIFO would hang every thread of the process. So the path is checked with stat()
 * first (a device is never even opened: opening some has side effects), then opened with
 * O_NONBLOCK (a FIFO opens at once) and O_NOCTTY (a terminal never becomes ours), and the
 * descriptor itself is checked with fstat(), because the path may have been swapped in between.
 * Anything but a regular file is refused unread. A file larger than the caller's limit is
 * refused before anything is allocated, and one whose size changes while it is read is
 * refused, not cut short.
 *
 * Writing. The data go to a fresh temporary "<path>.tmp.<pid>.<n>" in the same folder (same
 * file system: the rename is atomic), flushed with fsync, renamed over path, then the folder is
 * flushed, so that a reader, or a crash at any point, sees the old file or the new one whole.
 *
 * Temporaries of killed writers. A process killed between creating and renaming its temporary
 * leaves it behind. Every save first removes path's temporaries, "<basename>.tmp.<pid>.<n>" in
 * the same folder, whose pid names no live process (kill(pid, 0) fails with ESRCH). A live
 * process's temporary, ours included, is never touched: it may be a save in progress. (A pid
 * from another pid namespace sharing the folder can look dead; such a writer's rename then
 * fails and its save reports an I/O error instead of writing.) A leftover that happens to
 * carry this process's pid and counter is stepped over, not reused (O_EXCL).
 * Windows: the same read and write, without the sweep of dead processes' temporaries. */
#include "file_io.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _WIN32
#include <fcntl.h>
#include <io.h>
#include <process.h>
#include <sys/stat.h>
#include <windows.h>
#else
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#endif

/* tries at a temporary name before giving up: only leftovers with our own pid take one */
#define NAME_TRIES 64

const char *efl_file_result_string(efl_file_result r)
{
    switch (r) {
    case EFL_FILE_OK:
        return "read";
    case EFL_FILE_ABSENT:
        return "absent";
    case EFL_FILE_NOT_REGULAR:
        return "not a regular file";
    case EFL_FILE_TOO_LARGE:
        return "too large";
    case EFL_FILE_CHANGED:
        return "changed while read";
    case EFL_FILE_UNREADABLE:
        return "unreadable";
    case EFL_FILE_NO_MEMORY:
        return "out of memory";
    }
    return "?";
}

/* ----------------------------------------------------------- the platform */
#ifdef _WIN32
typedef struct _stat64 file_stat;
static int is_regular(const file_stat *st) { return (st->st_mode & _S_IFMT) == _S_IFREG; }
static int stat_path(const char *path, file_stat *st) { return _stat64(path, st); }
static int stat_fd(int fd, file_stat *st) { return _fstat64(fd, st); }
static int open_for_reading(const char *path) { return _open(path, _O_RDONLY | _O_BINARY | _O_NOINHERIT); }
static long read_some(int fd, void *buf, size_t n) { return _read(fd, buf, n > INT_MAX ? INT_MAX : (unsigned)n); }
static long write_some(int fd, const void *buf, size_t n)
{
    return _write(fd, buf, n > INT_MAX ? INT_MAX : (unsigned)n);
}
static int close_fd(int fd) { return _close(fd); }
static long process_id(void) { return (long)_getpid(); }
static int create_exclusive(const char *path, unsigned mode)
{
    (void)mode;
    return _open(path, _O_WRONLY | _O_CREAT | _O_EXCL | _O_BINARY | _O_NOINHERIT, _S_IREAD | _S_IWRITE);
}
static int flush_fd(int fd) { return _commit(fd); }
static int replace_file(const char *from, const char *to)
{
    return MoveFileExA(from, to, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH) ? 0 : -1;
}
static void sync_folder_of(const char *path) { (void)path; }
static void remove_stale_temporaries(const char *path) { (void)path; }
#else
typedef struct stat file_stat;
static int is_regular(const file_stat *st) { return S_ISREG(st->st_mode); }
static int stat_path(const char *path, file_stat *st) { return stat(path, st); }
static int stat_fd(int fd, file_stat *st) { return fstat(fd, st); }
static int open_for_reading(const char *path) { return open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC); }
static long read_some(int fd, void *buf, size_t n) { return (long)read(fd, buf, n); }
static long write_some(int fd, const void *buf, size_t n) { return (long)write(fd, buf, n); }
static int close_fd(int fd) { return close(fd); }
static long process_id(void) { return (long)getpid(); }
static int create_exclusive(const char *path, unsigned mode)
{
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOCTTY | O_CLOEXEC, (mode_t)mode);
}
static int flush_fd(int fd) { return fsync(fd); }
static int replace_file(const char *from, const char *to) { return rename(from, to); }

/* The folder part of path ("." when it has none, "/" for a file in the root); NULL: no memory. */
static char *folder_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
}

/* The rename itself reaches the disk with the folder's entry. Best effort: some file systems
 * refuse fsync on a folder, and the data are safe by then either way. */
static void sync_folder_of(const char *path)
{
    char *dir = folder_of(path);
    if (!dir)
        return;
    const int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dir);
}

/* Decimal digits at *p (no sign, no spaces) up to `limit`; advances *p; -1 if none or too big. */
static long parse_decimal(const char **p, long limit)
{
    long v = 0;
    const char *s = *p;
    for (; *s >= '0' && *s <= '9'; ++s) {
        if (v > (limit - (*s - '0')) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    if (s == *p)
        return -1;
    *p = s;
    return v;
}

/* The pid in name if name is "<base>.tmp.<pid>.<n>" exactly, else -1. */
static long temporary_owner(const char *name, const char *base, size_t base_len)
{
    if (strncmp(name, base, base_len) != 0 || strncmp(name + base_len, ".tmp.", 5) != 0)
        return -1;
    const char *p = name + base_len + 5;
    const long pid = parse_decimal(&p, INT_MAX);
    if (pid <= 0 || *p++ != '.' || parse_decimal(&p, LONG_MAX) < 0 || *p != '\0')
        return -1;
    return pid;
}

/* A process that no longer exists: ESRCH. EPERM means it lives (under another user). */
static int process_is_gone(long pid)
{
    return kill((pid_t)pid, 0) == -1 && errno == ESRCH;
}

/* Removes path's temporaries left by dead processes (the header says why and which). Best
 * effort: an unreadable folder or a file that will not go leaves things as they were. */
static void remove_stale_temporaries(const char *path)
{
    const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
    const size_t base_len = strlen(base);
    if (base_len == 0)
        return;
    char *dir = folder_of(path);
    DIR *d = dir ? opendir(dir) : NULL;
    free(dir);
    if (!d)
        return;
    const long self = process_id();
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        const long pid = temporary_owner(e->d_name, base, base_len);
        if (pid > 0 && pid != self && process_is_gone(pid))
            (void)unlinkat(dirfd(d), e->d_name, 0); /* a folder of that name stays */
    }
    closedir(d);
}
#endif

/* ------------------------------------------------------------------ reading */
/* expect bytes from fd into a fresh buffer. One byte more is asked for, so that a file that
 * grew since fstat is seen, not cut short. */
static efl_file_result read_exactly(int fd, size_t expect, unsigned char **out)
{
    unsigned char *buf = malloc(expect + 1);
    if (!buf)
        return EFL_FILE_NO_MEMORY;
    size_t got = 0;
    while (got <= expect) {
        const long r = read_some(fd, buf + got, expect + 1 - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            const int why = errno;
            free(buf);
            errno = why;
            return EFL_FILE_UNREADABLE;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    if (got != expect) {
        free(buf);
        return EFL_FILE_CHANGED;
    }
    *out = buf;
    return EFL_FILE_OK;
}

/* The checks on the open descriptor: a regular file (the path may have changed since the
 * stat), within the limit. */
static efl_file_result read_open_file(int fd, size_t max_bytes, unsigned char **out, size_t *size)
{
    file_stat st;
    if (stat_fd(fd, &st) != 0)
        return EFL_FILE_UNREADABLE;
    if (!is_regular(&st))
        return EFL_FILE_NOT_REGULAR;
    if (st.st_size < 0 || (uintmax_t)st.st_size > max_bytes || (uintmax_t)st.st_size >= SIZE_MAX)
        return EFL_FILE_TOO_LARGE;
    const size_t n = (size_t)st.st_size;
    const efl_file_result r = read_exactly(fd, n, out);
    if (r == EFL_FILE_OK)
        *size = n;
    return r;
}

efl_file_result efl_read_regular_file(const char *path, size_t max_bytes, unsigned char **out, size_t *size)
{
    file_stat st;
    if (stat_path(path, &st) != 0)
        return errno == ENOENT ? EFL_FILE_ABSENT : EFL_FILE_UNREADABLE;
    if (!is_regular(&st))
        return EFL_FILE_NOT_REGULAR; /* never opened */
    const int fd = open_for_reading(path);
    if (fd < 0)
        return errno == ENOENT ? EFL_FILE_ABSENT : EFL_FILE_UNREADABLE;
    const efl_file_result r = read_open_file(fd, max_bytes, out, size);
    const int why = errno;
    close_fd(fd);
    errno = why;
    return r;
}

/* ------------------------------------------------------------------ writing */
/* A new temporary beside path, its name in *tmp (the caller frees it); -1 with errno set, and
 * *tmp NULL when out of memory. */
static int create_temporary(const char *path, unsigned mode, char **tmp)
{
    static atomic_uint counter; /* two saves in one process never share a name */
    const size_t len = strlen(path) + 64;
    *tmp = malloc(len);
    if (!*tmp)
        return -1;
    int fd = -1;
    for (int i = 0; i < NAME_TRIES && fd < 0; ++i) {
        snprintf(*tmp, len, "%s.tmp.%ld.%u", path, process_id(), atomic_fetch_add(&counter, 1u));
        fd = create_exclusive(*tmp, mode);
        if (fd < 0 && errno != EEXIST)
            break;
    }
    return fd;
}

static int write_all(int fd, const unsigned char *p, size_t size)
{
    while (size > 0) {
        const long w = write_some(fd, p, size);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 0;
        p += w;
        size -= (size_t)w;
    }
    return 1;
}

efl_status efl_write_file_atomically(const char *path, const void *data, size_t size, unsigned mode)
{
    remove_stale_temporaries(path);
    char *tmp = NULL;
    const int fd = create_temporary(path, mode, &tmp);
    if (fd < 0) {
        const efl_status st = tmp ? EFL_ERROR_IO : EFL_ERROR_OUT_OF_MEMORY;
        free(tmp);
        return st;
    }
    int ok = write_all(fd, data, size) && flush_fd(fd) == 0;
    int why = errno;
    if (close_fd(fd) != 0 && ok) {
        ok = 0;
        why = errno;
    }
    if (ok && replace_file(tmp, path) != 0) {
        ok = 0;
        why = errno;
    }
    if (ok) {
        sync_folder_of(path);
    } else {
        remove(tmp);
        errno = why; /* the failure's, not the cleanup's */
    }
    free(tmp);
    return ok ? EFL_OK : EFL_ERROR_IO;
}
