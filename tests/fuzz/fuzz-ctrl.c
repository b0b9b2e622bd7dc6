/* fuzz-ctrl.c - libFuzzer target for what arrives from the network side of
 * the control channel. The input is taken twice: as a stream of control
 * requests, each cut as the server cuts it (ctrl_request_missing) and handled
 * by ctrl_handle against a model of the TPM backend; and as an swtpm state
 * blob (the payload of SET_STATEBLOB and of incoming migrations, plain or
 * encrypted) that must unwrap, wrap and unwrap again to the same state.
 *
 * The model aborts when ctrl.c breaks a rule the table states: a command
 * that needs a running TPM reaching a stopped one, a state set while it
 * runs, a locality that may not reset the established flag, hash data
 * longer than a request holds. Each response must fit its buffer, and a
 * descriptor that came with a request must be taken (closed or kept). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctrl.h"
#include "migration.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* ---- the model TPM ---------------------------------------------------------------- */

static struct {
    int version;
    bool running, hashing, owned;
    uint8_t *state[4]; /* by type (1 permanent, 2 volatile, 3 savestate) */
    uint32_t state_len[4];
    uint32_t buffer_size;
    unsigned sum; /* of the hashed bytes: each one is read */
} model;

static void model_reset(int version)
{
    for (int i = 0; i < 4; i++)
        free(model.state[i]);
    memset(&model, 0, sizeof(model));
    model.version = version;
    model.buffer_size = 4096;
}

static void need_running(void)
{
    if (!model.running)
        abort(); /* the table says RUNNING: ctrl.c must not call it stopped */
}

static bool op_running(void)
{
    return model.running;
}

static int op_version(void)
{
    return model.version;
}

static uint32_t op_start(bool delete_volatile)
{
    if (delete_volatile) {
        free(model.state[2]);
        model.state[2] = NULL;
        model.state_len[2] = 0;
    }
    model.running = true;
    model.hashing = false;
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_stop(bool orderly)
{
    (void)orderly;
    model.running = model.hashing = false;
    return TPM_CTRL_SUCCESS;
}

static void op_cancel(void)
{
    need_running();
}

static uint32_t op_get_established(bool *established)
{
    need_running();
    *established = model.version == 2;
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_reset_established(uint8_t locality)
{
    need_running();
    if (locality < 3 || locality > 4)
        abort(); /* ctrl.c lets only localities 3 and 4 reset it */
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_hash_start(void)
{
    need_running();
    model.hashing = true;
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_hash_data(const uint8_t *data, uint32_t len)
{
    need_running();
    if (len > CTRL_HASH_DATA_MAX)
        abort();
    for (uint32_t i = 0; i < len; i++)
        model.sum += data[i]; /* out of the request: the sanitizer says so */
    return model.hashing ? TPM_CTRL_SUCCESS : TPM_CTRL_FAIL;
}

static uint32_t op_hash_end(void)
{
    need_running();
    bool was = model.hashing;
    model.hashing = false;
    return was ? TPM_CTRL_SUCCESS : TPM_CTRL_FAIL;
}

static uint32_t op_store_volatile(void)
{
    need_running();
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_get_state(int type, uint8_t **blob, uint32_t *len)
{
    need_running();
    if (type < 1 || type > 3)
        abort();
    *blob = NULL;
    *len = model.state_len[type];
    if (*len) {
        *blob = malloc(*len);
        if (!*blob)
            return TPM_CTRL_FAIL;
        memcpy(*blob, model.state[type], *len);
    }
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_set_state(int type, const uint8_t *blob, uint32_t len)
{
    if (model.running || type < 1 || type > 3)
        abort(); /* the table says STOPPED; ctrl.c checks the type */
    uint8_t *copy = len ? malloc(len) : NULL;
    if (len && !copy)
        return TPM_CTRL_FAIL;
    if (len)
        memcpy(copy, blob, len);
    free(model.state[type]);
    model.state[type] = copy;
    model.state_len[type] = len;
    return TPM_CTRL_SUCCESS;
}

static uint32_t op_set_buffer_size(uint32_t wanted, uint32_t *size, uint32_t *min, uint32_t *max)
{
    if (wanted && model.running)
        return TPM_CTRL_BAD_ORDINAL; /* as the backend: only while stopped */
    if (wanted)
        model.buffer_size = wanted < 1024 ? 1024 : wanted > 4096 ? 4096 : wanted;
    *size = model.buffer_size;
    *min = 1024;
    *max = 4096;
    return TPM_CTRL_SUCCESS;
}

static char *op_info(uint64_t flags)
{
    char *s = NULL;
    if (!flags || asprintf(&s, "{\"flags\":%llu}", (unsigned long long)flags) < 0)
        return NULL; /* no flag asks for nothing: libtpms answers NULL */
    return s;
}

static const struct ctrl_tpm_ops model_ops = {
    .running = op_running,
    .version = op_version,
    .start = op_start,
    .stop = op_stop,
    .cancel = op_cancel,
    .get_established = op_get_established,
    .reset_established = op_reset_established,
    .hash_start = op_hash_start,
    .hash_data = op_hash_data,
    .hash_end = op_hash_end,
    .store_volatile = op_store_volatile,
    .get_state = op_get_state,
    .set_state = op_set_state,
    .set_buffer_size = op_set_buffer_size,
    .info = op_info,
};

/* ---- what the server would do ----------------------------------------------------- */

static uint32_t cb_set_datafd(void *opaque, int fd)
{
    (void)opaque;
    close(fd);
    return TPM_CTRL_SUCCESS;
}

static uint32_t cb_lock_storage(void *opaque, uint32_t retries)
{
    (void)opaque, (void)retries;
    model.owned = true;
    return TPM_CTRL_SUCCESS;
}

static void cb_savestate_read(void *opaque)
{
    (void)opaque;
    model.owned = false; /* the outgoing side's hand-off */
}

static void cb_log(void *opaque, const char *message)
{
    (void)opaque;
    model.sum += (unsigned)strlen(message); /* a string, whole */
}

/* Handle the requests the input holds, until one is incomplete, refused
 * (the server closes the connection) or SHUTDOWN. */
static void serve(const struct ctrl_env *env, const uint8_t *data, size_t size)
{
    for (unsigned n = 0; size >= 4; n++) {
        uint32_t cmd = nv_be32(data);
        size_t have = 4;
        long missing;
        while ((missing = ctrl_request_missing(data, have)) > 0 && have + (size_t)missing <= size)
            have += (size_t)missing;
        if (missing != 0)
            return;
        /* a copy of its own length, so that a read past it is seen */
        uint8_t *exact = malloc(have);
        if (!exact)
            return;
        memcpy(exact, data, have);
        int fd = (n + size) % 4 == 0 ? open("/dev/null", O_RDONLY | O_CLOEXEC) : -1;
        uint8_t resp[CTRL_MAX_RESPONSE];
        uint8_t *big = NULL;
        size_t resp_len = 0;
        enum ctrl_action a = ctrl_handle(env, exact, have, fd, resp, &resp_len, &big);
        free(exact);
        if (resp_len < 4 || (!big && resp_len > CTRL_MAX_RESPONSE))
            abort();
        /* closed by ctrl_handle, or taken by SET_DATAFD (cb_set_datafd closes it) */
        if (fd >= 0 && (fcntl(fd, F_GETFD) != -1 || errno != EBADF))
            abort();
        free(big);
        if (a == CTRL_EXIT) {
            if (cmd != CTRL_SHUTDOWN)
                abort();
            return;
        }
        data += have;
        size -= have;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A fixed migration key: blobs sealed with it reach the decryption. */
    static const struct mig_key key = {.aes = "0123456789abcdef", .len = 16};
    const struct mig_key *keys[2] = {NULL, &key};
    uint8_t locality = 0;
    model_reset(size & 32 ? 1 : 2);
    struct ctrl_env env = {.tpm = &model_ops,
                           .locality = &locality,
                           .reject_locality_4 = size & 4,
                           .file_key = size & 8,
                           .migration = size & 16,
                           .migration_key = keys[size % 2],
                           .state_key = keys[(size >> 1) % 2],
                           .set_datafd = cb_set_datafd,
                           .lock_storage = cb_lock_storage,
                           .savestate_read = cb_savestate_read,
                           .log = cb_log};
    if (size >= 4)
        ctrl_request_missing(data, size); /* more than one request at hand */
    serve(&env, data, size);
    if (locality > 4 || (locality == 4 && env.reject_locality_4))
        abort();
    model_reset(2);

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
