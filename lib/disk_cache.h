/* Compiled programs on disk (lib/disk_cache.c). Called with the context's lock held. */
#ifndef EFL_DISK_CACHE_H
#define EFL_DISK_CACHE_H

#include <stdint.h>

#include "internal.h"

/* FNV-1a, 64 bits; start a hash at EFL_FNV_OFFSET, continue one by passing its value */
#define EFL_FNV_OFFSET 0xCBF29CE484222325ULL
uint64_t efl_fnv1a64(const void *data, size_t len, uint64_t h);

/* The cache folder, created and checked; 0 when the cache is off or refused (logged). */
int efl_disk_cache_dir(efl_context *ctx, char *dir, size_t size);
/* A built program from the entry for `key`, or NULL (no entry, or a bad one: logged). */
cl_program efl_disk_cache_load(efl_context *ctx, const char *dir, const char *key, const char *options);
/* The entry parser (tests/fuzz): what is wrong with the bytes e[0..len) as the entry for `key`,
 * or NULL, then *bin and *bin_len locate the binary inside e. */
const char *efl_disk_cache_check_entry(const unsigned char *e, size_t len, const char *key,
                                       const unsigned char **bin, size_t *bin_len);
/* Writes the program's binary as the entry for `key` (temporary file, flush, rename; the
 * temporaries of dead processes removed first: lib/file_io.c). */
void efl_disk_cache_store(efl_context *ctx, const char *dir, const char *key, cl_program prog);

#endif
