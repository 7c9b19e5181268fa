/* libFuzzer target: the disk cache's entry parser (lib/disk_cache.c) on arbitrary bytes. An entry
 * is read from a folder only we can write, but it is still input from disk: no byte sequence may
 * make the parser read outside the buffer or accept an entry whose sizes do not add up. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "disk_cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the first byte picks the key the entry is checked against: ours, or a near miss */
    static const char *keys[] = {"efl 0.1.0\nfuzz key\n", "efl 0.1.0\nfuzz kez\n", ""};
    if (size == 0)
        return 0;
    const char *key = keys[data[0] % 3];
    unsigned char *e = malloc(size - 1 ? size - 1 : 1); /* exact size: ASan sees any overread */
    if (!e)
        return 0;
    memcpy(e, data + 1, size - 1);
    const unsigned char *bin = NULL;
    size_t bin_len = 0;
    if (efl_disk_cache_check_entry(e, size - 1, key, &bin, &bin_len) == NULL) {
        /* accepted: the binary lies inside the entry, after the header and the key */
        if (bin < e + 28 + strlen(key) || bin + bin_len != e + (size - 1))
            abort();
    }
    free(e);
    return 0;
}
