/* ctrl.c - the control channel: every command of swtpm's protocol
 * (0x01 to 0x13) with swtpm's layouts, result codes and running/stopped
 * rules, as Debian's swtpm 0.7 answers them (tests/tpm compares the two). */
#include "ctrl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migration.h"

/* Fixed body sizes; HASH_DATA and SET_STATEBLOB add their data. */
static long body_size(uint32_t cmd)
{
    switch (cmd) {
    case CTRL_INIT:
    case CTRL_SET_BUFFERSIZE:
    case CTRL_LOCK_STORAGE:
    case CTRL_HASH_DATA:
        return 4;
    case CTRL_SET_LOCALITY:
    case CTRL_RESET_TPMESTABLISHED:
        return 1;
    case CTRL_GET_STATEBLOB:
    case CTRL_SET_STATEBLOB:
        return 12;
    case CTRL_GET_INFO:
        return 16;
    default:
        return 0; /* unknown commands too: answered with BAD_ORDINAL */
    }
}

long ctrl_request_missing(const uint8_t *req, size_t have)
{
    uint32_t cmd = nv_be32(req);
    size_t need = 4 + (size_t)body_size(cmd);
    if (have >= need && cmd == CTRL_HASH_DATA) {
        uint32_t n = nv_be32(req + 4);
        if (n > CTRL_HASH_DATA_MAX)
            return -1;
        need += n;
    } else if (have >= need && cmd == CTRL_SET_STATEBLOB) {
        uint32_t n = nv_be32(req + 12);
        if (n > MIG_BLOB_MAX)
            return -1;
        need += n;
    }
    return have >= need ? 0 : (long)(need - have);
}

/* Bits 0 to 14: INIT, SHUTDOWN, GET_TPMESTABLISHED, SET_LOCALITY, HASHING
 * (start, data, end), CANCEL, STORE_VOLATILE, RESET_TPMESTABLISHED,
 * GET_STATEBLOB, SET_STATEBLOB, STOP, GET_CONFIG, SET_DATAFD, SET_BUFFERSIZE,
 * GET_INFO; bit 15 the send-command header (TPM 2): swtpm 0.7's. Bit 16,
 * LOCK_STORAGE (swtpm 0.8's), only when --migration asks for the hand-off
 * that needs it; the command itself is always answered. */
uint32_t ctrl_capabilities(int tpm_version, bool migration)
{
    return 0x7fffu | (tpm_version == 2 ? 1u << 15 : 0) | (migration ? 1u << 16 : 0);
}

static size_t result_only(uint8_t *resp, uint32_t result)
{
    nv_put_be32(resp, result);
    return 4;
}

static size_t get_established(uint8_t *resp)
{
    bool est = false;
    uint32_t r = tpm_backend_get_established(&est);
    nv_put_be32(resp, r);
    memset(resp + 4, 0, 4);
    resp[4] = r == 0 && est;
    return r == 0 ? 8 : 4;
}

static size_t set_locality(const struct ctrl_env *env, uint8_t loc, uint8_t *resp)
{
    if (loc > 4 || (loc == 4 && env->reject_locality_4))
        return result_only(resp, TPM_CTRL_BAD_LOCALITY);
    *env->locality = loc;
    return result_only(resp, TPM_CTRL_SUCCESS);
}

static size_t reset_established(uint8_t loc, uint8_t *resp)
{
    if (loc < 3 || loc > 4) /* only localities 3 and 4 may reset it */
        return result_only(resp, TPM_CTRL_BAD_LOCALITY);
    return result_only(resp, tpm_backend_reset_established(loc));
}

/* result flags totlength length data, from offset on. */
static size_t get_stateblob(const struct ctrl_env *env, const uint8_t *body, uint8_t *resp,
                            uint8_t **big)
{
    uint32_t type = nv_be32(body + 4), offset = nv_be32(body + 8);
    uint8_t *state = NULL, *blob = NULL;
    uint32_t len = 0;
    size_t blob_len = 0;
    memset(resp, 0, 16);
    if (!tpm_backend_running()) /* swtpm answers a stopped TPM with the result alone */
        return nv_put_be32(resp, TPM_CTRL_BAD_ORDINAL), 4;
    if (type < 1 || type > 3) /* swtpm: an unknown type does not exist */
        return nv_put_be32(resp, TPM_CTRL_RETRY), 16;
    uint32_t r = tpm_backend_get_state((int)type, &state, &len);
    /* A migration reads the savestate blob last, empty or not (a TPM 2 rarely
     * has one): once read, the source may let the destination take the image. */
    if (type == 3 && r == TPM_CTRL_SUCCESS && env->savestate_read)
        env->savestate_read(env->opaque);
    if (r == TPM_CTRL_SUCCESS && len == 0)
        r = TPM_CTRL_RETRY; /* an empty blob (no savestate) does not exist either */
    /* swtpm's rule: with a state key, the blob stays encrypted with it unless the
     * client asks for it decrypted (flag 1) */
    const struct mig_key *state_key = (nv_be32(body) & 1) ? NULL : env->state_key;
    if (r == TPM_CTRL_SUCCESS &&
        mig_blob_wrap(state, len, env->migration_key, state_key, &blob, &blob_len, NULL) < 0)
        r = TPM_CTRL_FAIL;
    free(state);
    if (r == TPM_CTRL_SUCCESS && offset > blob_len)
        r = TPM_CTRL_BAD_PARAMETER;
    nv_put_be32(resp, r);
    if (r != TPM_CTRL_SUCCESS) {
        free(blob);
        return 16;
    }
    size_t n = blob_len - offset;
    *big = malloc(16 + n);
    if (!*big) {
        free(blob);
        nv_put_be32(resp, TPM_CTRL_FAIL);
        return 16;
    }
    memcpy(*big, resp, 4);
    nv_put_be32(*big + 4, state_key ? 2u : 0u); /* 2: encrypted with the state key */
    nv_put_be32(*big + 8, (uint32_t)n);
    nv_put_be32(*big + 12, (uint32_t)n);
    memcpy(*big + 16, blob + offset, n);
    free(blob);
    return 16 + n;
}

/* A state change needs the image: take its ownership if this process does not
 * hold it (started with --migration incoming, or released it after a
 * migration's last blob). Fails at once when another process holds it. */
static uint32_t claim_storage(const struct ctrl_env *env)
{
    return env->lock_storage ? env->lock_storage(env->opaque, 0) : TPM_CTRL_SUCCESS;
}

static uint32_t init(const struct ctrl_env *env, const uint8_t *body)
{
    uint32_t claimed = claim_storage(env);
    return claimed != TPM_CTRL_SUCCESS ? claimed : tpm_backend_start(nv_be32(body) & 1);
}

static uint32_t set_stateblob(const struct ctrl_env *env, const uint8_t *body)
{
    uint32_t flags = nv_be32(body), type = nv_be32(body + 4), len = nv_be32(body + 8);
    uint8_t *state = NULL;
    size_t state_len = 0;
    (void)flags;
    if (tpm_backend_running())
        return TPM_CTRL_BAD_ORDINAL;
    if (type < 1 || type > 3)
        return TPM_CTRL_BAD_PARAMETER;
    uint32_t claimed = claim_storage(env);
    if (claimed != TPM_CTRL_SUCCESS)
        return claimed;
    struct nv_error err = {0};
    int e = mig_blob_unwrap(body + 12, len, env->migration_key, env->state_key, &state, &state_len,
                            &err);
    if (e < 0 && env->log)
        env->log(env->opaque, err.msg);
    if (e == -ENOKEY)
        return TPM_CTRL_KEY_NOT_FOUND;
    if (e == -EKEYREJECTED)
        return TPM_CTRL_DECRYPT_ERROR;
    if (e < 0)
        return TPM_CTRL_BAD_PARAMETER;
    uint32_t r = tpm_backend_set_state((int)type, state, (uint32_t)state_len);
    free(state);
    return r;
}

static size_t set_buffersize(uint32_t wanted, uint8_t *resp)
{
    uint32_t size = 0, min = 0, max = 0;
    uint32_t r = tpm_backend_set_buffer_size(wanted, &size, &min, &max);
    nv_put_be32(resp, r);
    if (r)
        return 4; /* swtpm: the result alone */
    nv_put_be32(resp + 4, r ? 0 : size);
    nv_put_be32(resp + 8, r ? 0 : min);
    nv_put_be32(resp + 12, r ? 0 : max);
    return 16;
}

static size_t get_info(const uint8_t *body, uint8_t *resp, uint8_t **big)
{
    uint64_t flags = (uint64_t)nv_be32(body) << 32 | nv_be32(body + 4);
    uint32_t offset = nv_be32(body + 8);
    memset(resp, 0, 12);
    char *info = tpm_backend_info(flags);
    size_t len = info ? strlen(info) + 1 : 0; /* swtpm counts (and sends) the NUL */
    if (!info || offset > len) {
        free(info);
        nv_put_be32(resp, TPM_CTRL_BAD_PARAMETER);
        return 12;
    }
    size_t n = len - offset;
    *big = malloc(12 + n);
    if (!*big) {
        free(info);
        nv_put_be32(resp, TPM_CTRL_FAIL);
        return 12;
    }
    nv_put_be32(*big, TPM_CTRL_SUCCESS);
    nv_put_be32(*big + 4, (uint32_t)n);
    nv_put_be32(*big + 8, (uint32_t)n);
    memcpy(*big + 12, info + offset, n);
    free(info);
    return 12 + n;
}

/* The commands that need a running TPM, and answer BAD_ORDINAL otherwise. */
static bool needs_running(uint32_t cmd)
{
    return cmd == CTRL_CANCEL_TPM_CMD || cmd == CTRL_STORE_VOLATILE ||
           cmd == CTRL_GET_TPMESTABLISHED || cmd == CTRL_HASH_START || cmd == CTRL_HASH_DATA ||
           cmd == CTRL_HASH_END || cmd == CTRL_RESET_TPMESTABLISHED;
}

enum ctrl_action ctrl_handle(const struct ctrl_env *env, const uint8_t *req, size_t len, int fd,
                             uint8_t *resp, size_t *resp_len, uint8_t **big)
{
    uint32_t cmd = nv_be32(req);
    const uint8_t *body = req + 4;
    (void)len;
    *big = NULL;
    if (fd >= 0 && cmd != CTRL_SET_DATAFD) {
        close(fd); /* a descriptor only SET_DATAFD takes */
        fd = -1;
    }
    if (needs_running(cmd) && !tpm_backend_running()) {
        *resp_len = result_only(resp, TPM_CTRL_BAD_ORDINAL);
        return CTRL_CONTINUE;
    }
    switch (cmd) {
    case CTRL_GET_CAPABILITY:
        nv_put_be32(resp, 0);
        nv_put_be32(resp + 4, ctrl_capabilities(tpm_backend_version(), env->migration));
        *resp_len = 8;
        break;
    case CTRL_INIT:
        *resp_len = result_only(resp, init(env, body));
        break;
    case CTRL_SHUTDOWN:
        *resp_len = result_only(
            resp, tpm_backend_stop(!env->store_at_stop || env->store_at_stop(env->opaque)));
        return CTRL_EXIT;
    case CTRL_GET_TPMESTABLISHED:
        *resp_len = get_established(resp);
        break;
    case CTRL_SET_LOCALITY:
        *resp_len = set_locality(env, body[0], resp);
        break;
    case CTRL_HASH_START:
        *resp_len = result_only(resp, tpm_backend_hash_start());
        break;
    case CTRL_HASH_DATA:
        *resp_len = result_only(resp, tpm_backend_hash_data(body + 4, nv_be32(body)));
        break;
    case CTRL_HASH_END:
        *resp_len = result_only(resp, tpm_backend_hash_end());
        break;
    case CTRL_CANCEL_TPM_CMD:
        tpm_backend_cancel();
        *resp_len = result_only(resp, TPM_CTRL_SUCCESS);
        break;
    case CTRL_STORE_VOLATILE:
        *resp_len = result_only(resp, tpm_backend_store_volatile());
        break;
    case CTRL_RESET_TPMESTABLISHED:
        *resp_len = reset_established(body[0], resp);
        break;
    case CTRL_GET_STATEBLOB:
        *resp_len = get_stateblob(env, body, resp, big);
        break;
    case CTRL_SET_STATEBLOB:
        *resp_len = result_only(resp, set_stateblob(env, body));
        break;
    case CTRL_STOP:
        *resp_len = result_only(resp, tpm_backend_stop(false));
        break;
    case CTRL_GET_CONFIG:
        nv_put_be32(resp, 0);
        nv_put_be32(resp + 4, (env->file_key ? 1u : 0u) | (env->migration_key ? 2u : 0u));
        *resp_len = 8;
        break;
    case CTRL_SET_DATAFD:
        *resp_len = result_only(resp, fd < 0 ? TPM_CTRL_FAIL : env->set_datafd(env->opaque, fd));
        break;
    case CTRL_SET_BUFFERSIZE:
        *resp_len = set_buffersize(nv_be32(body), resp);
        break;
    case CTRL_GET_INFO:
        *resp_len = get_info(body, resp, big);
        break;
    case CTRL_LOCK_STORAGE:
        *resp_len =
            result_only(resp, env->lock_storage ? env->lock_storage(env->opaque, nv_be32(body))
                                                : TPM_CTRL_SUCCESS);
        break;
    default: {
        char msg[64]; /* swtpm logs it at every level */
        snprintf(msg, sizeof(msg), "unknown control command 0x%08x", cmd);
        if (env->log)
            env->log(env->opaque, msg);
        *resp_len = result_only(resp, TPM_CTRL_BAD_ORDINAL);
        break;
    }
    }
    return CTRL_CONTINUE;
}
