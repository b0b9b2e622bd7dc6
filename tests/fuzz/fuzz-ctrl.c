/* fuzz-ctrl.c - libFuzzer target for what arrives from the network side of
 * the control channel: the request-size parser, and swtpm state blobs (the
 * payload of SET_STATEBLOB and of incoming migrations, plain or encrypted). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ctrl.h"
#include "migration.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size >= 4)
        ctrl_request_missing(data, size);
    /* A fixed migration key: blobs sealed with it reach the decryption. */
    static const struct mig_key key = {.aes = "0123456789abcdef", .len = 16};
    const struct mig_key *keys[2] = {NULL, &key};
    uint8_t *state = NULL;
    size_t len = 0;
    if (mig_blob_unwrap(data, size, &key, &key, &state, &len, NULL) == 0) {
        uint8_t *blob = NULL;
        size_t blob_len = 0;
        /* What unwraps must wrap again and unwrap to the same state. */
        if (mig_blob_wrap(state, len, keys[size % 2], NULL, &blob, &blob_len, NULL) == 0) {
            uint8_t *again = NULL;
            size_t again_len = 0;
            if (mig_blob_unwrap(blob, blob_len, &key, NULL, &again, &again_len, NULL) != 0 ||
                again_len != len || (len && memcmp(again, state, len) != 0))
                abort();
            free(again);
        }
        free(blob);
    }
    free(state);
    return 0;
}
