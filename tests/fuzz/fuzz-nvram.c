/* fuzz-nvram.c - libFuzzer target for the NVRAM's parsers: the input is a
 * superblock (its first 4096 bytes) followed by a blob slot. The superblock
 * is decoded and bounds-checked; the slot is opened as every blob, with a key
 * taken from the input (GCM then fails to authenticate, exercising that
 * path) and, when the input's superblock is valid and plain, as it is. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 20))
        return 0;
    uint8_t raw[NVRAM_SB_SIZE] = {0};
    memcpy(raw, data, size < sizeof(raw) ? size : sizeof(raw));
    struct nvram_super sb;
    char why[256];
    uint64_t end;
    bool valid = nvram_super_decode(raw, &sb, why, sizeof(why)) == 0;
    if (valid)
        nvram_super_extent(&sb, (uint64_t)size << 4, &end, why, sizeof(why));
    else
        nvram_layout_default(&sb);
    size_t rest = size > NVRAM_SB_SIZE ? size - NVRAM_SB_SIZE : 0;
    size_t slot_size = rest + NVRAM_SLOT_HEADER_SIZE;
    uint8_t *slot = calloc(1, slot_size), *plain = malloc(slot_size);
    if (!slot || !plain)
        goto out;
    memcpy(slot, data + (size > NVRAM_SB_SIZE ? NVRAM_SB_SIZE : size), rest);
    uint8_t key[32] = {0};
    memcpy(key, data, size < sizeof(key) ? size : sizeof(key));
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        struct nvram_slot_info info;
        nvram_slot_open(slot, slot_size, (enum nvram_blob)b, &sb, key, plain, &info);
        nvram_slot_open(slot, slot_size, (enum nvram_blob)b, &sb, NULL, plain, &info);
    }
out:
    free(slot);
    free(plain);
    return 0;
}
