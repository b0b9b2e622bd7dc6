/* fuzz-blob.c - libFuzzer target for swtpm's state-blob format as files and
 * GET/SET_STATEBLOB carry it (migration/): the first input byte says which
 * keys the reader has (bit 0 the migration key, bit 1 the state key, bit 2
 * 256-bit keys), the rest is the blob. Invariants: a blob that opens yields at
 * most as many bytes as it had, and what it yields wraps and opens again to
 * the same bytes. The keys are fixed so that the corpus can hold real
 * encrypted blobs (made by `nvtpm export --new-key` with these keys). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "migration.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct mig_key key128 = {.aes = "0123456789abcdef", .len = 16};
static const struct mig_key key256 = {.aes = "0123456789abcdef0123456789abcdef", .len = 32};

static void round_trip(const uint8_t *state, size_t len, const struct mig_key *key)
{
    uint8_t *blob = NULL, *back = NULL;
    size_t blob_len = 0, back_len = 0;
    if (mig_blob_wrap(state, len, key, NULL, &blob, &blob_len, NULL) < 0)
        abort();
    if (mig_blob_unwrap(blob, blob_len, key, NULL, &back, &back_len, NULL) < 0 || back_len != len ||
        (len && memcmp(back, state, len) != 0))
        abort();
    free(back);
    free(blob);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const struct mig_key *key = (data[0] & 4) ? &key256 : &key128;
    uint8_t *state = NULL;
    size_t state_len = 0;
    int r = mig_blob_unwrap(data + 1, size - 1, (data[0] & 1) ? key : NULL,
                            (data[0] & 2) ? key : NULL, &state, &state_len, NULL);
    if (r == 0) {
        if (state_len > size - 1)
            abort();
        round_trip(state, state_len, (data[0] & 1) ? key : NULL);
    }
    free(state);
    return 0;
}
