/* tpm.h - the TPM backend: the process's one libtpms instance, its state in
 * the NVRAM image. Above migration/ and nvram/; the socket server (server/)
 * and the TIS device (tis/) sit on it.
 *
 * libtpms keeps its state in process globals, so there is one backend per
 * process. Its calls are serialised by a mutex inside the backend; only
 * tpm_backend_cancel crosses it. Control-channel results are TPM 1.2 style
 * codes (TPM_SUCCESS, TPM_FAIL, ...), as swtpm's protocol has them. */
#ifndef NVTPM_TPM_H
#define NVTPM_TPM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migration.h"
#include "nvram.h"

/* Control-channel result codes (swtpm's; TPM 1.2 numbering). */
enum {
    TPM_CTRL_SUCCESS = 0x00,
    TPM_CTRL_BAD_PARAMETER = 0x03,
    TPM_CTRL_FAIL = 0x09,
    TPM_CTRL_BAD_ORDINAL = 0x0a,
    TPM_CTRL_KEY_NOT_FOUND = 0x0d,
    TPM_CTRL_IO_ERROR = 0x1f,
    TPM_CTRL_DECRYPT_ERROR = 0x21,
    TPM_CTRL_BAD_KEY_PROPERTY = 0x28,
    TPM_CTRL_BAD_LOCALITY = 0x3d,
    TPM_CTRL_RETRY = 0x800,
};

enum tpm_startup {
    TPM_STARTUP_NONE = 0,
    TPM_STARTUP_CLEAR,
    TPM_STARTUP_STATE,
    TPM_STARTUP_DEACTIVATED, /* TPM 1.2 */
};

struct tpm_backend_options {
    int tpm_version;            /* 1 (TPM 1.2) or 2 (TPM 2.0) */
    struct nvram *nvram;        /* where the state lives */
    bool disable_auto_shutdown; /* no TPM2_Shutdown(SU_STATE) before stopping */
    enum tpm_startup startup;   /* sent after each start (--flags startup-...) */
    bool reject_locality_4;
    unsigned debug_level; /* libtpms' debug output at >= 5, at its level - 4 (swtpm's) */
    int debug_fd;
    const char *debug_prefix; /* before each libtpms line, then four spaces (swtpm's) */
};

int tpm_backend_init(const struct tpm_backend_options *opts, struct nv_error *err);
/* Start the TPM (TPMLIB_MainInit: it resumes from a stored volatile state if
 * there is one), then delete that state if asked (INIT's flag 1), then the
 * startup command if one is configured. */
uint32_t tpm_backend_start(bool delete_volatile);
/* Stop it; orderly: TPM2_Shutdown(SU_STATE) first if the guest did not send
 * one (unless disabled). No volatile state is stored: the next start is a
 * cold boot unless STORE_VOLATILE stored one. */
uint32_t tpm_backend_stop(bool orderly);
bool tpm_backend_running(void);
int tpm_backend_version(void);

/* Execute one command at locality (on the caller's thread). The response
 * buffer belongs to the backend and stays valid until the next execute. */
uint32_t tpm_backend_execute(const uint8_t *cmd, uint32_t len, uint8_t locality,
                             const uint8_t **resp, uint32_t *resp_len);
void tpm_backend_cancel(void);
/* Give back what the NVRAM holds after loads and commits
 * (nvram_release_memory), unless a command is running: the caller's thread
 * never waits for one (the control channel answers during long commands). */
void tpm_backend_release_memory(void);
/* Whether there is such memory to give back. */
bool tpm_backend_holds_memory(void);
/* Run fn(arg) with the backend's lock held, so that no command (and no NVRAM
 * callback) runs meanwhile: for what changes the storage under the TPM, such
 * as claiming or releasing the image. Returns fn's result. */
int tpm_backend_exclusive(int (*fn)(void *arg), void *arg);

uint32_t tpm_backend_set_buffer_size(uint32_t wanted, uint32_t *size, uint32_t *min, uint32_t *max);
uint32_t tpm_backend_get_established(bool *established);
uint32_t tpm_backend_reset_established(uint8_t locality);
uint32_t tpm_backend_hash_start(void);
uint32_t tpm_backend_hash_data(const uint8_t *data, uint32_t len);
uint32_t tpm_backend_hash_end(void);
uint32_t tpm_backend_store_volatile(void);
/* The raw libtpms blob of a state type (1 permanent, 2 volatile, 3 savestate):
 * of the running TPM (the volatile one is not stored, as with swtpm 0.7), or
 * as stored. TPM_CTRL_RETRY when it does not exist. */
uint32_t tpm_backend_get_state(int type, uint8_t **blob, uint32_t *len);
/* Set a state blob for the next start (the TPM must be stopped). */
uint32_t tpm_backend_set_state(int type, const uint8_t *blob, uint32_t len);
/* TPMLIB_ValidateState: could libtpms start from the state the NVRAM store
 * holds (and the blobs set with tpm_backend_set_state)? 0 if so. Reads only;
 * the TPM must not be running. */
uint32_t tpm_backend_validate(void);
/* The same for an incoming state (its absent blobs NULL) instead of the NVRAM
 * store's. */
uint32_t tpm_backend_validate_state(const struct mig_state *state);
/* TPMLIB_GetInfo's JSON (malloc'd), or NULL. */
char *tpm_backend_info(uint64_t flags);

/* The largest command the data channel accepts (the buffer size). */
uint32_t tpm_backend_buffer_size(void);

/* The version of the libtpms this process runs on, "MAJOR.MINOR.MICRO". */
const char *tpm_libtpms_version(void);

/* ---- the migration dry run (validate.c) ------------------------------------------ */

struct tpm_validate_options {
    const char *img;
    const struct nvram_key *key; /* the image's (and swtpm's state key); NULL: none */
    int tpm_version;             /* the version the state must be; 0: either */
    int wait_ms;                 /* for the shared access lock while a server commits */
    const char *blobs_dir;       /* swtpm's state files or saved blobs to check instead of the
                                  * image's state; NULL: the image's */
    const struct nvram_key *migration_key; /* for blobs_dir; NULL: none */
};

#define TPM_VALIDATE_MAX_CHECKS 16
struct tpm_validation {
    struct {
        const char *name; /* open, lock, qcow2, writable, superblock, key, slots, tpm-version,
                           * blobs, libtpms */
        int err;          /* 0: passed; else a negative errno that says why, as the layers'
                           * (ENOKEY, EKEYREJECTED, EKEYREVOKED for a key given to a plain
                           * image, EBUSY, EUCLEAN corrupt, EMEDIUMTYPE not loadable here,
                           * EINVAL a --blobs folder not there, ...) */
        char message[512];
    } checks[TPM_VALIDATE_MAX_CHECKS];
    int n;
    int err;               /* the first failed check's; 0: loadable here */
    enum nv_status status; /* what the first failure means, where the layer said so */
};

/* Can this host load the TPM state in o->img with o->key right now? Opens it
 * read-only under the shared access lock (beside the server that owns it),
 * checks it layer by layer until one fails (every check in v, in order), and
 * asks libtpms (TPMLIB_ValidateState) last. Never writes. Initialises the
 * backend: not for a process that runs a TPM. Returns v->err. */
int tpm_validate(const struct tpm_validate_options *o, struct tpm_validation *v);

#endif
