/* ctrl.c - the control channel: every command of swtpm's protocol
 * (0x01 to 0x13) with swtpm's layouts, result codes and running/stopped
 * rules, as Debian's swtpm 0.7 answers them (tests/tpm compares the two).
 * One table row per command says its request size, whether it needs the TPM
 * running (or stopped) and its handler; the TPM is reached through env->tpm. */
#include "ctrl.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "migration.h"

/* A request being handled: what a handler reads and where it answers. */
struct call {
    const struct ctrl_env *env;
    const struct ctrl_tpm_ops *tpm;
    const uint8_t *body; /* after the command code, as long as the row says */
    int fd;              /* the descriptor that came with it (SET_DATAFD), -1: none */
    uint8_t *resp;       /* CTRL_MAX_RESPONSE bytes */
    uint8_t **big;       /* or a malloc'd response */
};

static size_t result_only(const struct call *c, uint32_t result)
{
    nv_put_be32(c->resp, result);
    return 4;
}

static size_t get_capability(const struct call *c)
{
    nv_put_be32(c->resp, 0);
    nv_put_be32(c->resp + 4, ctrl_capabilities(c->tpm->version(), c->env->migration));
    return 8;
}

/* A state change needs the image: take its ownership if this process does not
 * hold it (started with --migration incoming, or released it after a
 * migration's last blob). Fails at once when another process holds it. */
static uint32_t claim_storage(const struct ctrl_env *env)
{
    return env->lock_storage ? env->lock_storage(env->opaque, 0) : TPM_CTRL_SUCCESS;
}

static size_t init(const struct call *c)
{
    uint32_t claimed = claim_storage(c->env);
    return result_only(c,
                       claimed != TPM_CTRL_SUCCESS ? claimed : c->tpm->start(nv_be32(c->body) & 1));
}

static size_t shutdown_tpm(const struct call *c)
{
    const struct ctrl_env *env = c->env;
    return result_only(c, c->tpm->stop(!env->store_at_stop || env->store_at_stop(env->opaque)));
}

static size_t get_established(const struct call *c)
{
    bool est = false;
    uint32_t r = c->tpm->get_established(&est);
    nv_put_be32(c->resp, r);
    memset(c->resp + 4, 0, 4);
    c->resp[4] = r == 0 && est;
    return r == 0 ? 8 : 4;
}

static size_t set_locality(const struct call *c)
{
    uint8_t loc = c->body[0];
    if (loc > 4 || (loc == 4 && c->env->reject_locality_4))
        return result_only(c, TPM_CTRL_BAD_LOCALITY);
    *c->env->locality = loc;
    return result_only(c, TPM_CTRL_SUCCESS);
}

static size_t hash_start(const struct call *c)
{
    return result_only(c, c->tpm->hash_start());
}

static size_t hash_data(const struct call *c)
{
    return result_only(c, c->tpm->hash_data(c->body + 4, nv_be32(c->body)));
}

static size_t hash_end(const struct call *c)
{
    return result_only(c, c->tpm->hash_end());
}

static size_t cancel(const struct call *c)
{
    c->tpm->cancel();
    return result_only(c, TPM_CTRL_SUCCESS);
}

static size_t store_volatile(const struct call *c)
{
    return result_only(c, c->tpm->store_volatile());
}

static size_t reset_established(const struct call *c)
{
    uint8_t loc = c->body[0];
    if (loc < 3 || loc > 4) /* only localities 3 and 4 may reset it */
        return result_only(c, TPM_CTRL_BAD_LOCALITY);
    return result_only(c, c->tpm->reset_established(loc));
}

/* result flags totlength length data, from offset on. */
static size_t get_stateblob(const struct call *c)
{
    const struct ctrl_env *env = c->env;
    uint32_t type = nv_be32(c->body + 4), offset = nv_be32(c->body + 8);
    uint8_t *state = NULL, *blob = NULL, *resp = c->resp;
    uint32_t len = 0;
    size_t blob_len = 0;
    memset(resp, 0, 16);
    if (type < 1 || type > 3) /* swtpm: an unknown type does not exist */
        return nv_put_be32(resp, TPM_CTRL_RETRY), 16;
    uint32_t r = c->tpm->get_state((int)type, &state, &len);
    /* A migration reads the savestate blob last, empty or not (a TPM 2 rarely
     * has one): once read, the source may let the destination take the image. */
    if (type == 3 && r == TPM_CTRL_SUCCESS && env->savestate_read)
        env->savestate_read(env->opaque);
    if (r == TPM_CTRL_SUCCESS && len == 0)
        r = TPM_CTRL_RETRY; /* an empty blob (no savestate) does not exist either */
    /* swtpm's rule: with a state key, the blob stays encrypted with it unless the
     * client asks for it decrypted (flag 1) */
    const struct mig_key *state_key = (nv_be32(c->body) & 1) ? NULL : env->state_key;
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
    uint8_t *out = malloc(16 + n);
    if (!out) {
        free(blob);
        nv_put_be32(resp, TPM_CTRL_FAIL);
        return 16;
    }
    memcpy(out, resp, 4);
    nv_put_be32(out + 4, state_key ? 2u : 0u); /* 2: encrypted with the state key */
    nv_put_be32(out + 8, (uint32_t)n);
    nv_put_be32(out + 12, (uint32_t)n);
    memcpy(out + 16, blob + offset, n);
    free(blob);
    *c->big = out;
    return 16 + n;
}

static uint32_t set_stateblob_result(const struct call *c)
{
    const struct ctrl_env *env = c->env;
    uint32_t type = nv_be32(c->body + 4), len = nv_be32(c->body + 8);
    uint8_t *state = NULL;
    size_t state_len = 0;
    /* the flags (body + 0) ask for nothing this server does not do anyway */
    if (type < 1 || type > 3)
        return TPM_CTRL_BAD_PARAMETER;
    uint32_t claimed = claim_storage(env);
    if (claimed != TPM_CTRL_SUCCESS)
        return claimed;
    struct nv_error err = {0};
    int e = mig_blob_unwrap(c->body + 12, len, env->migration_key, env->state_key, &state,
                            &state_len, &err);
    if (e < 0 && env->log)
        env->log(env->opaque, err.msg);
    if (e == -ENOKEY)
        return TPM_CTRL_KEY_NOT_FOUND;
    if (e == -EKEYREJECTED)
        return TPM_CTRL_DECRYPT_ERROR;
    if (e < 0)
        return TPM_CTRL_BAD_PARAMETER;
    uint32_t r = c->tpm->set_state((int)type, state, (uint32_t)state_len);
    free(state);
    return r;
}

static size_t set_stateblob(const struct call *c)
{
    return result_only(c, set_stateblob_result(c));
}

static size_t stop(const struct call *c)
{
    return result_only(c, c->tpm->stop(false));
}

static size_t get_config(const struct call *c)
{
    nv_put_be32(c->resp, 0);
    nv_put_be32(c->resp + 4, (c->env->file_key ? 1u : 0u) | (c->env->migration_key ? 2u : 0u));
    return 8;
}

static size_t set_datafd(const struct call *c)
{
    return result_only(c, c->fd < 0 ? TPM_CTRL_FAIL : c->env->set_datafd(c->env->opaque, c->fd));
}

static size_t set_buffersize(const struct call *c)
{
    uint32_t size = 0, min = 0, max = 0;
    uint32_t r = c->tpm->set_buffer_size(nv_be32(c->body), &size, &min, &max);
    nv_put_be32(c->resp, r);
    if (r)
        return 4; /* swtpm: the result alone */
    nv_put_be32(c->resp + 4, size);
    nv_put_be32(c->resp + 8, min);
    nv_put_be32(c->resp + 12, max);
    return 16;
}

static size_t get_info(const struct call *c)
{
    uint64_t flags = (uint64_t)nv_be32(c->body) << 32 | nv_be32(c->body + 4);
    uint32_t offset = nv_be32(c->body + 8);
    memset(c->resp, 0, 12);
    char *info = c->tpm->info(flags);
    size_t len = info ? strlen(info) + 1 : 0; /* swtpm counts (and sends) the NUL */
    if (!info || offset > len) {
        free(info);
        nv_put_be32(c->resp, TPM_CTRL_BAD_PARAMETER);
        return 12;
    }
    size_t n = len - offset;
    uint8_t *out = malloc(12 + n);
    if (!out) {
        free(info);
        nv_put_be32(c->resp, TPM_CTRL_FAIL);
        return 12;
    }
    nv_put_be32(out, TPM_CTRL_SUCCESS);
    nv_put_be32(out + 4, (uint32_t)n);
    nv_put_be32(out + 8, (uint32_t)n);
    memcpy(out + 12, info + offset, n);
    free(info);
    *c->big = out;
    return 12 + n;
}

static size_t lock_storage(const struct call *c)
{
    const struct ctrl_env *env = c->env;
    return result_only(c, env->lock_storage ? env->lock_storage(env->opaque, nv_be32(c->body))
                                            : TPM_CTRL_SUCCESS);
}

/* When a command may run; otherwise it is answered with BAD_ORDINAL alone. */
enum when {
    ALWAYS,
    RUNNING, /* the TPM must be running */
    STOPPED, /* the TPM must be stopped */
};

struct command {
    uint32_t body;     /* the request's bytes after the command code */
    uint32_t data_max; /* nonzero: the body ends with a count of data bytes that
                        * follow, at most this many */
    enum when when;
    size_t (*handle)(const struct call *c); /* fills resp (or *big); the length */
};

/* Every command of the protocol; a code without a row is unknown. */
static const struct command commands[] = {
    [CTRL_GET_CAPABILITY] = {0, 0, ALWAYS, get_capability},
    [CTRL_INIT] = {4, 0, ALWAYS, init},
    [CTRL_SHUTDOWN] = {0, 0, ALWAYS, shutdown_tpm},
    [CTRL_GET_TPMESTABLISHED] = {0, 0, RUNNING, get_established},
    [CTRL_SET_LOCALITY] = {1, 0, ALWAYS, set_locality},
    [CTRL_HASH_START] = {0, 0, RUNNING, hash_start},
    [CTRL_HASH_DATA] = {4, CTRL_HASH_DATA_MAX, RUNNING, hash_data},
    [CTRL_HASH_END] = {0, 0, RUNNING, hash_end},
    [CTRL_CANCEL_TPM_CMD] = {0, 0, RUNNING, cancel},
    [CTRL_STORE_VOLATILE] = {0, 0, RUNNING, store_volatile},
    [CTRL_RESET_TPMESTABLISHED] = {1, 0, RUNNING, reset_established},
    [CTRL_GET_STATEBLOB] = {12, 0, RUNNING, get_stateblob},
    [CTRL_SET_STATEBLOB] = {12, MIG_BLOB_MAX, STOPPED, set_stateblob},
    [CTRL_STOP] = {0, 0, ALWAYS, stop},
    [CTRL_GET_CONFIG] = {0, 0, ALWAYS, get_config},
    [CTRL_SET_DATAFD] = {0, 0, ALWAYS, set_datafd},
    [CTRL_SET_BUFFERSIZE] = {4, 0, ALWAYS, set_buffersize},
    [CTRL_GET_INFO] = {16, 0, ALWAYS, get_info},
    [CTRL_LOCK_STORAGE] = {4, 0, ALWAYS, lock_storage},
};

static const struct command *command_of(uint32_t cmd)
{
    if (cmd >= sizeof(commands) / sizeof(commands[0]) || !commands[cmd].handle)
        return NULL;
    return &commands[cmd];
}

long ctrl_request_missing(const uint8_t *req, size_t have)
{
    const struct command *c = command_of(nv_be32(req));
    size_t need = 4 + (c ? c->body : 0); /* unknown: the code alone, for BAD_ORDINAL */
    if (c && c->data_max && have >= need) {
        uint32_t n = nv_be32(req + need - 4);
        if (n > c->data_max)
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

enum ctrl_action ctrl_handle(const struct ctrl_env *env, const uint8_t *req, size_t len, int fd,
                             uint8_t *resp, size_t *resp_len, uint8_t **big)
{
    uint32_t cmd = nv_be32(req);
    const struct command *command = command_of(cmd);
    struct call c = {
        .env = env, .tpm = env->tpm, .body = req + 4, .fd = fd, .resp = resp, .big = big};
    (void)len;
    *big = NULL;
    if (fd >= 0 && cmd != CTRL_SET_DATAFD) {
        close(fd); /* a descriptor only SET_DATAFD takes */
        c.fd = -1;
    }
    if (!command) {
        char msg[64]; /* swtpm logs it at every level */
        snprintf(msg, sizeof(msg), "unknown control command 0x%08x", cmd);
        if (env->log)
            env->log(env->opaque, msg);
        *resp_len = result_only(&c, TPM_CTRL_BAD_ORDINAL);
        return CTRL_CONTINUE;
    }
    if ((command->when == RUNNING && !env->tpm->running()) ||
        (command->when == STOPPED && env->tpm->running())) {
        *resp_len = result_only(&c, TPM_CTRL_BAD_ORDINAL);
        return CTRL_CONTINUE;
    }
    *resp_len = command->handle(&c);
    return cmd == CTRL_SHUTDOWN ? CTRL_EXIT : CTRL_CONTINUE; /* answer, then stop the process */
}
