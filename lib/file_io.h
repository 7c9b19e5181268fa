/* Whole files read and written safely (lib/file_io.c), for the checkpoint and the disk cache. */
#ifndef EFL_FILE_IO_H
#define EFL_FILE_IO_H

#include <stddef.h>

#include "efl/efl.h"

/* What efl_read_regular_file found; each caller maps it to its own answer. */
typedef enum {
    EFL_FILE_OK = 0,
    EFL_FILE_ABSENT,      /* nothing at the path */
    EFL_FILE_NOT_REGULAR, /* a FIFO, device, socket or folder: refused, never read */
    EFL_FILE_TOO_LARGE,   /* more than max_bytes: refused before anything is allocated */
    EFL_FILE_CHANGED,     /* its size changed while it was read */
    EFL_FILE_UNREADABLE,  /* open or read failed; errno says why */
    EFL_FILE_NO_MEMORY
} efl_file_result;

/* A few words for a log line ("not a regular file", ...). */
const char *efl_file_result_string(efl_file_result r);

/* The whole regular file at path into *out (malloc'd, the caller frees it; one spare byte, so
 * an empty file is a valid pointer too) and its length into *size. Never blocks on a FIFO or a
 * device. On anything but EFL_FILE_OK, *out and *size are left as they were. */
efl_file_result efl_read_regular_file(const char *path, size_t max_bytes, unsigned char **out, size_t *size);

/* data[0..size) to path atomically: a temporary "<path>.tmp.<pid>.<n>" in the same folder,
 * created with `mode` (less the umask), flushed to the disk, renamed over path, then the folder
 * flushed. Before that it removes temporaries of path that dead processes left (see file_io.c).
 * EFL_OK; EFL_ERROR_IO (errno says why) with path as it was and no temporary left;
 * EFL_ERROR_OUT_OF_MEMORY. */
efl_status efl_write_file_atomically(const char *path, const void *data, size_t size, unsigned mode);

#endif
