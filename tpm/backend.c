/* backend.c - the process's one libtpms instance: its NVRAM callbacks on
 * the NVRAM store, the locality callback, serialised access, and the
 * volatile-state rules of swtpm 0.7 (stored on STORE_VOLATILE only, never at
 * a stop) with TPM2_Shutdown(SU_STATE) at an orderly stop when the
 * guest sent none. */
#include "tpm.h"

#include <errno.h>
#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>
#include <libtpms/tpm_tis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TPM2_CC_SHUTDOWN    0x00000145u
#define TPM2_CC_STARTUP     0x00000144u
#define TPM2_ST_NO_SESSIONS 0x8001u
#define TPM_ORD_STARTUP     0x00000099u

static struct {
    struct tpm_backend_options opts;
    pthread_mutex_t lock;
    bool running;
    bool guest_shut_down; /* the last successful command was TPM2_Shutdown */
    uint8_t locality;
    unsigned char *resp; /* libtpms' response buffer, reused */
    uint32_t resp_cap;
    uint32_t buffer_size;
    /* While validating incoming blobs: the state libtpms loads instead of
     * the NVRAM store's (NULL data: absent). */
    bool incoming;
    const uint8_t *incoming_data[NVRAM_BLOBS];
    uint32_t incoming_len[NVRAM_BLOBS];
} be = {.lock = PTHREAD_MUTEX_INITIALIZER};

static int blob_of(const char *name)
{
    return nvram_blob_by_name(name);
}

static TPM_RESULT cb_nvram_init(void)
{
    return TPM_SUCCESS;
}

static void report(const char *what, const struct nv_error *err)
{
    fprintf(stderr, "nvtpm: %s: %s\n", what, err->msg);
}

static TPM_RESULT cb_load(unsigned char **data, uint32_t *length, uint32_t tpm_number,
                          const char *name)
{
    (void)tpm_number;
    int blob = blob_of(name);
    uint8_t *buf = NULL;
    size_t len = 0;
    struct nv_error err = {0};
    if (blob < 0)
        return TPM_FAIL;
    if (be.incoming) {
        if (!be.incoming_data[blob] || !(*data = malloc(be.incoming_len[blob] + 1)))
            return be.incoming_data[blob] ? TPM_FAIL : TPM_RETRY;
        memcpy(*data, be.incoming_data[blob], be.incoming_len[blob]);
        *length = be.incoming_len[blob];
        return TPM_SUCCESS;
    }
    int r = nvram_load(be.opts.nvram, (enum nvram_blob)blob, &buf, &len, &err);
    if (r == -ENOENT)
        return TPM_RETRY;
    if (r < 0) {
        report("loading the TPM state", &err);
        return TPM_FAIL;
    }
    *data = buf; /* malloc'd: libtpms frees it */
    *length = (uint32_t)len;
    return TPM_SUCCESS;
}

static TPM_RESULT cb_store(const unsigned char *data, uint32_t length, uint32_t tpm_number,
                           const char *name)
{
    (void)tpm_number;
    int blob = blob_of(name);
    struct nv_error err = {0};
    if (blob < 0)
        return TPM_FAIL;
    if (nvram_store(be.opts.nvram, (enum nvram_blob)blob, data, length, &err) < 0) {
        report("storing the TPM state", &err);
        return TPM_FAIL;
    }
    return TPM_SUCCESS;
}

static TPM_RESULT cb_delete(uint32_t tpm_number, const char *name, TPM_BOOL must_exist)
{
    (void)tpm_number;
    (void)must_exist;
    int blob = blob_of(name);
    struct nv_error err = {0};
    if (blob < 0)
        return TPM_FAIL;
    if (nvram_delete(be.opts.nvram, (enum nvram_blob)blob, &err) < 0) {
        report("deleting TPM state", &err);
        return TPM_FAIL;
    }
    return TPM_SUCCESS;
}

static TPM_RESULT cb_locality(TPM_MODIFIER_INDICATOR *locality, uint32_t tpm_number)
{
    (void)tpm_number;
    *locality = be.locality;
    return TPM_SUCCESS;
}

int tpm_backend_init(const struct tpm_backend_options *opts, struct nv_error *err)
{
    static struct libtpms_callbacks cbs = {
        .sizeOfStruct = sizeof(struct libtpms_callbacks),
        .tpm_nvram_init = cb_nvram_init,
        .tpm_nvram_loaddata = cb_load,
        .tpm_nvram_storedata = cb_store,
        .tpm_nvram_deletename = cb_delete,
        .tpm_io_getlocality = cb_locality,
    };
    be.opts = *opts;
    if (TPMLIB_ChooseTPMVersion(opts->tpm_version == 2 ? TPMLIB_TPM_VERSION_2
                                                       : TPMLIB_TPM_VERSION_1_2) != TPM_SUCCESS)
        return nv_error_set(err, -ENOTSUP, "libtpms cannot run a TPM %s",
                            opts->tpm_version == 2 ? "2.0" : "1.2");
    if (TPMLIB_RegisterCallbacks(&cbs) != TPM_SUCCESS)
        return nv_error_set(err, -EIO, "libtpms refused the NVRAM callbacks");
    if (opts->debug_level >= 5) { /* swtpm's scale: libtpms' level is 4 below */
        char prefix[256];
        snprintf(prefix, sizeof(prefix), "%s    ", opts->debug_prefix ? opts->debug_prefix : "");
        TPMLIB_SetDebugFD(opts->debug_fd);
        TPMLIB_SetDebugLevel(opts->debug_level - 4);
        TPMLIB_SetDebugPrefix(prefix); /* libtpms copies it */
    }
    uint32_t min, max;
    be.buffer_size = TPMLIB_SetBufferSize(0, &min, &max);
    return 0;
}

int tpm_backend_version(void)
{
    return be.opts.tpm_version;
}

bool tpm_backend_running(void)
{
    pthread_mutex_lock(&be.lock);
    bool running = be.running;
    pthread_mutex_unlock(&be.lock);
    return running;
}

uint32_t tpm_backend_buffer_size(void)
{
    return be.buffer_size;
}

/* Run a command with the lock held; notes TPM2_Shutdown for the auto-shutdown. */
static uint32_t execute_locked(const uint8_t *cmd, uint32_t len, const uint8_t **resp,
                               uint32_t *resp_len)
{
    uint32_t size = 0;
    TPM_RESULT r = TPMLIB_Process(&be.resp, &size, &be.resp_cap, (unsigned char *)cmd, len);
    if (r != TPM_SUCCESS)
        return r;
    if (be.opts.tpm_version == 2 && len >= 10 && size >= 10) {
        uint32_t cc = nv_be32(cmd + 6), rc = nv_be32(be.resp + 6);
        if (rc == 0)
            be.guest_shut_down = cc == TPM2_CC_SHUTDOWN;
    }
    *resp = be.resp;
    *resp_len = size;
    return TPM_SUCCESS;
}

/* TPM2_Startup / TPM_Startup with the configured type. */
static void send_startup(void)
{
    uint8_t cmd[12];
    const uint8_t *resp;
    uint32_t len;
    uint16_t su;
    if (be.opts.startup == TPM_STARTUP_NONE)
        return;
    if (be.opts.tpm_version == 2) {
        nv_put_be16(cmd, TPM2_ST_NO_SESSIONS);
        nv_put_be32(cmd + 2, 12);
        nv_put_be32(cmd + 6, TPM2_CC_STARTUP);
        su = be.opts.startup == TPM_STARTUP_STATE ? 1 : 0;
    } else {
        nv_put_be16(cmd, 0x00c1);
        nv_put_be32(cmd + 2, 12);
        nv_put_be32(cmd + 6, TPM_ORD_STARTUP);
        su = be.opts.startup == TPM_STARTUP_STATE         ? 2
             : be.opts.startup == TPM_STARTUP_DEACTIVATED ? 3
                                                          : 1;
    }
    nv_put_be16(cmd + 10, su);
    /* TPM_RC_INITIALIZE (0x100): the TPM resumed from its saved volatile
     * state and is started already, which is what that state says. */
    if (execute_locked(cmd, sizeof(cmd), &resp, &len) == TPM_SUCCESS && len >= 10 &&
        nv_be32(resp + 6) && nv_be32(resp + 6) != 0x100)
        fprintf(stderr, "nvtpm: the startup command failed: 0x%x\n", nv_be32(resp + 6));
}

uint32_t tpm_backend_start(bool delete_volatile)
{
    pthread_mutex_lock(&be.lock);
    if (be.running) {
        TPMLIB_Terminate();
        be.running = false;
    }
    struct nv_error err = {0};
    /* swtpm's rule: libtpms resumes from a stored volatile state if there is
     * one; INIT's flag 1 (QEMU's start after an incoming migration) then
     * deletes it, so that it is used once. Without the flag it stays. */
    TPM_RESULT r = TPMLIB_MainInit();
    if (r == TPM_SUCCESS && delete_volatile &&
        nvram_delete(be.opts.nvram, NVRAM_VOLATILESTATE, &err) < 0) {
        report("deleting the volatile state", &err);
        TPMLIB_Terminate();
        r = TPM_FAIL;
    }
    if (r == TPM_SUCCESS) {
        be.running = true;
        be.guest_shut_down = false;
        send_startup();
    }
    pthread_mutex_unlock(&be.lock);
    return r;
}

static void auto_shutdown(void)
{
    uint8_t cmd[12];
    const uint8_t *resp;
    uint32_t len;
    nv_put_be16(cmd, TPM2_ST_NO_SESSIONS);
    nv_put_be32(cmd + 2, 12);
    nv_put_be32(cmd + 6, TPM2_CC_SHUTDOWN);
    nv_put_be16(cmd + 10, 1); /* SU_STATE */
    execute_locked(cmd, sizeof(cmd), &resp, &len);
}

static uint32_t store_volatile_locked(void)
{
    unsigned char *buf = NULL;
    uint32_t len = 0;
    struct nv_error err = {0};
    TPM_RESULT r = TPMLIB_VolatileAll_Store(&buf, &len);
    if (r == TPM_SUCCESS && nvram_store(be.opts.nvram, NVRAM_VOLATILESTATE, buf, len, &err) < 0) {
        report("storing the volatile state", &err);
        r = TPM_FAIL;
    }
    free(buf);
    return r;
}

uint32_t tpm_backend_stop(bool orderly)
{
    pthread_mutex_lock(&be.lock);
    /* No volatile state is stored at a stop (swtpm's rule): the next start is
     * a cold boot. TPM2_Shutdown(SU_STATE) keeps the dictionary-attack
     * counter from counting the stop as a disorderly one. */
    if (be.running && orderly && be.opts.tpm_version == 2 && !be.opts.disable_auto_shutdown &&
        !be.guest_shut_down)
        auto_shutdown();
    if (be.running)
        TPMLIB_Terminate();
    be.running = false;
    pthread_mutex_unlock(&be.lock);
    return TPM_SUCCESS;
}

uint32_t tpm_backend_execute(const uint8_t *cmd, uint32_t len, uint8_t locality,
                             const uint8_t **resp, uint32_t *resp_len)
{
    pthread_mutex_lock(&be.lock);
    uint32_t r = TPM_CTRL_BAD_ORDINAL;
    if (be.running) {
        be.locality = locality;
        r = execute_locked(cmd, len, resp, resp_len);
    }
    pthread_mutex_unlock(&be.lock);
    return r;
}

void tpm_backend_release_memory(void)
{
    if (pthread_mutex_trylock(&be.lock) != 0)
        return; /* a command runs: whoever runs it releases once it is idle */
    nvram_release_memory(be.opts.nvram);
    pthread_mutex_unlock(&be.lock);
}

bool tpm_backend_holds_memory(void)
{
    pthread_mutex_lock(&be.lock);
    bool holds = nvram_holds_memory(be.opts.nvram);
    pthread_mutex_unlock(&be.lock);
    return holds;
}

int tpm_backend_exclusive(int (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&be.lock);
    int r = fn(arg);
    pthread_mutex_unlock(&be.lock);
    return r;
}

void tpm_backend_cancel(void)
{
    if (be.opts.tpm_version == 2)
        TPMLIB_CancelCommand(); /* the one call allowed across the lock */
}

uint32_t tpm_backend_set_buffer_size(uint32_t wanted, uint32_t *size, uint32_t *min, uint32_t *max)
{
    pthread_mutex_lock(&be.lock);
    uint32_t r = TPM_SUCCESS;
    if (wanted && be.running) {
        r = TPM_CTRL_BAD_ORDINAL; /* only while stopped */
    } else {
        *size = TPMLIB_SetBufferSize(wanted, min, max);
        if (wanted)
            be.buffer_size = *size;
    }
    pthread_mutex_unlock(&be.lock);
    return r;
}

/* The calls below need the TPM running and the lock held. */
#define WITH_RUNNING_TPM(expr)                                                                     \
    do {                                                                                           \
        pthread_mutex_lock(&be.lock);                                                              \
        uint32_t r_ = be.running ? (uint32_t)(expr) : TPM_CTRL_BAD_ORDINAL;                        \
        pthread_mutex_unlock(&be.lock);                                                            \
        return r_;                                                                                 \
    } while (0)

uint32_t tpm_backend_get_established(bool *established)
{
    TPM_BOOL flag = 0;
    pthread_mutex_lock(&be.lock);
    uint32_t r = be.running ? TPM_IO_TpmEstablished_Get(&flag) : TPM_CTRL_BAD_ORDINAL;
    pthread_mutex_unlock(&be.lock);
    *established = flag;
    return r;
}

uint32_t tpm_backend_reset_established(uint8_t locality)
{
    pthread_mutex_lock(&be.lock);
    uint32_t r = TPM_CTRL_BAD_ORDINAL;
    if (be.running) {
        uint8_t saved = be.locality;
        be.locality = locality;
        r = TPM_IO_TpmEstablished_Reset();
        be.locality = saved;
    }
    pthread_mutex_unlock(&be.lock);
    return r;
}

uint32_t tpm_backend_hash_start(void)
{
    WITH_RUNNING_TPM(TPM_IO_Hash_Start());
}

uint32_t tpm_backend_hash_data(const uint8_t *data, uint32_t len)
{
    WITH_RUNNING_TPM(TPM_IO_Hash_Data(data, len));
}

uint32_t tpm_backend_hash_end(void)
{
    WITH_RUNNING_TPM(TPM_IO_Hash_End());
}

uint32_t tpm_backend_store_volatile(void)
{
    WITH_RUNNING_TPM(store_volatile_locked());
}

static enum TPMLIB_StateType state_type(int type)
{
    return type == 1   ? TPMLIB_STATE_PERMANENT
           : type == 2 ? TPMLIB_STATE_VOLATILE
           : type == 3 ? TPMLIB_STATE_SAVE_STATE
                       : 0;
}

uint32_t tpm_backend_get_state(int type, uint8_t **blob, uint32_t *len)
{
    enum TPMLIB_StateType st = state_type(type);
    if (!st)
        return TPM_CTRL_BAD_PARAMETER;
    pthread_mutex_lock(&be.lock);
    unsigned char *buf = NULL;
    uint32_t r;
    if (st == TPMLIB_STATE_VOLATILE && be.running) {
        r = TPMLIB_VolatileAll_Store(&buf, len); /* the live one; not stored (swtpm 0.7) */
    } else if (be.running) {
        r = TPMLIB_GetState(st, &buf, len);
    } else {
        size_t n = 0;
        struct nv_error err = {0};
        int e = nvram_load(be.opts.nvram, (enum nvram_blob)(type - 1), &buf, &n, &err);
        r = e == -ENOENT ? TPM_CTRL_RETRY : e < 0 ? TPM_CTRL_IO_ERROR : TPM_SUCCESS;
        *len = (uint32_t)n;
    }
    pthread_mutex_unlock(&be.lock);
    if (r == TPM_SUCCESS)
        *blob = buf;
    else
        free(buf);
    return r;
}

uint32_t tpm_backend_set_state(int type, const uint8_t *blob, uint32_t len)
{
    enum TPMLIB_StateType st = state_type(type);
    if (!st)
        return TPM_CTRL_BAD_PARAMETER;
    pthread_mutex_lock(&be.lock);
    uint32_t r = be.running ? TPM_CTRL_BAD_ORDINAL : TPMLIB_SetState(st, blob, len);
    pthread_mutex_unlock(&be.lock);
    return r;
}

static const enum TPMLIB_StateType validate_types[NVRAM_BLOBS] = {
    TPMLIB_STATE_PERMANENT, TPMLIB_STATE_VOLATILE, TPMLIB_STATE_SAVE_STATE};

/* TPMLIB_ValidateState over the blobs that exist: libtpms' TPM 1.2 code
 * refuses a state whose volatile or saved state is absent when asked to
 * check it, though an absent one is a valid state. */
static uint32_t validate_present(void)
{
    unsigned types = 0;
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        bool present = be.incoming_data[b] != NULL;
        if (!be.incoming) {
            uint8_t *buf = NULL;
            size_t n = 0;
            struct nv_error err = {0};
            present = nvram_load(be.opts.nvram, (enum nvram_blob)b, &buf, &n, &err) != -ENOENT;
            free(buf);
        }
        types |= present ? (unsigned)validate_types[b] : 0;
    }
    return TPMLIB_ValidateState((enum TPMLIB_StateType)types, 0);
}

uint32_t tpm_backend_validate(void)
{
    pthread_mutex_lock(&be.lock);
    uint32_t r = be.running ? TPM_CTRL_BAD_ORDINAL : validate_present();
    pthread_mutex_unlock(&be.lock);
    return r;
}

uint32_t tpm_backend_validate_state(const struct mig_state *state)
{
    pthread_mutex_lock(&be.lock);
    be.incoming = true;
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        be.incoming_data[b] = state->data[b];
        be.incoming_len[b] = (uint32_t)state->len[b];
    }
    uint32_t r = be.running ? TPM_CTRL_BAD_ORDINAL : validate_present();
    be.incoming = false;
    pthread_mutex_unlock(&be.lock);
    return r;
}

char *tpm_backend_info(uint64_t flags)
{
    pthread_mutex_lock(&be.lock);
    char *info = TPMLIB_GetInfo((enum TPMLIB_InfoFlags)flags);
    pthread_mutex_unlock(&be.lock);
    return info;
}

const char *tpm_libtpms_version(void)
{
    static char text[16];
    uint32_t v = TPMLIB_GetVersion();
    snprintf(text, sizeof(text), "%u.%u.%u", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff);
    return text;
}
