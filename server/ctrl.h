/* ctrl.h - the control channel's protocol (swtpm's), private to server/. */
#ifndef NVTPM_SERVER_CTRL_H
#define NVTPM_SERVER_CTRL_H

#include <stddef.h>
#include <stdint.h>

#include "tpm.h"

enum ctrl_command {
    CTRL_GET_CAPABILITY = 0x01,
    CTRL_INIT = 0x02,
    CTRL_SHUTDOWN = 0x03,
    CTRL_GET_TPMESTABLISHED = 0x04,
    CTRL_SET_LOCALITY = 0x05,
    CTRL_HASH_START = 0x06,
    CTRL_HASH_DATA = 0x07,
    CTRL_HASH_END = 0x08,
    CTRL_CANCEL_TPM_CMD = 0x09,
    CTRL_STORE_VOLATILE = 0x0a,
    CTRL_RESET_TPMESTABLISHED = 0x0b,
    CTRL_GET_STATEBLOB = 0x0c,
    CTRL_SET_STATEBLOB = 0x0d,
    CTRL_STOP = 0x0e,
    CTRL_GET_CONFIG = 0x0f,
    CTRL_SET_DATAFD = 0x10,
    CTRL_SET_BUFFERSIZE = 0x11,
    CTRL_GET_INFO = 0x12,
    CTRL_LOCK_STORAGE = 0x13,
};

#define CTRL_MAX_REQUEST (16u + 512u * 1024u + 4096u)
/* HASH_DATA takes as much as a request holds (swtpm takes 8 KiB and more) */
#define CTRL_HASH_DATA_MAX (CTRL_MAX_REQUEST - 8u)

/* The TPM the control channel drives, with tpm_backend_*'s meanings: the
 * server gives the backend's functions; the fuzz target a model of its own. */
struct ctrl_tpm_ops {
    bool (*running)(void);
    int (*version)(void);
    uint32_t (*start)(bool delete_volatile);
    uint32_t (*stop)(bool orderly);
    void (*cancel)(void);
    uint32_t (*get_established)(bool *established);
    uint32_t (*reset_established)(uint8_t locality);
    uint32_t (*hash_start)(void);
    uint32_t (*hash_data)(const uint8_t *data, uint32_t len);
    uint32_t (*hash_end)(void);
    uint32_t (*store_volatile)(void);
    uint32_t (*get_state)(int type, uint8_t **blob, uint32_t *len);
    uint32_t (*set_state)(int type, const uint8_t *blob, uint32_t len);
    uint32_t (*set_buffer_size)(uint32_t wanted, uint32_t *size, uint32_t *min, uint32_t *max);
    char *(*info)(uint64_t flags);
};

/* What the server offers the handler. */
struct ctrl_env {
    const struct ctrl_tpm_ops *tpm;
    void *opaque;
    uint8_t *locality; /* the data channel's locality */
    bool reject_locality_4;
    bool file_key;                       /* for GET_CONFIG */
    bool migration;                      /* --migration given: LOCK_STORAGE is announced */
    const struct mig_key *migration_key; /* NULL: blobs leave plain */
    const struct mig_key *state_key;     /* NULL: refuse state-key-encrypted blobs */
    /* SET_DATAFD: take fd as the data channel; returns a result code. */
    uint32_t (*set_datafd)(void *opaque, int fd);
    /* LOCK_STORAGE (retries of 10 ms; also called with 0 before INIT and
     * SET_STATEBLOB) and the hand-off after a savestate is read. */
    uint32_t (*lock_storage)(void *opaque, uint32_t retries);
    void (*savestate_read)(void *opaque);
    /* Why a request failed, for the log (NULL: not logged). */
    void (*log)(void *opaque, const char *message);
    /* SHUTDOWN: whether the TPM may store its state as it stops (NULL: yes). */
    bool (*store_at_stop)(void *opaque);
};

enum ctrl_action {
    CTRL_CONTINUE,
    CTRL_EXIT, /* SHUTDOWN: answer, then stop the process */
};

/* How many more bytes the request needs to be whole, given the have bytes
 * read so far (at least 4); 0 when whole; -1 when it can never be valid. */
long ctrl_request_missing(const uint8_t *req, size_t have);

/* Handle one whole request; fd is a descriptor that came with it (or -1; the
 * handler takes it). The response goes to resp (room for CTRL_MAX_RESPONSE
 * bytes) or, when large, *big (malloc'd; the caller frees it). */
#define CTRL_MAX_RESPONSE 64u
enum ctrl_action ctrl_handle(const struct ctrl_env *env, const uint8_t *req, size_t len, int fd,
                             uint8_t *resp, size_t *resp_len, uint8_t **big);

/* The capability bits this server reports. */
uint32_t ctrl_capabilities(int tpm_version, bool migration);

#endif
