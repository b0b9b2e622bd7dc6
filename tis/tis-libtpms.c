/* tis-libtpms.c - a TIS device backed by this process's libtpms (backend.c),
 * its state in an NVRAM image as the socket server keeps it. Commands run on
 * a worker thread, so the VMM's register accesses never wait for one (and
 * commandCancel reaches a long key generation). */
#include "tis-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tpm.h"

struct tis_libtpms {
    struct tis *tis;
    pthread_t worker;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool have_command, stopping;
    uint8_t locality;
    const uint8_t *cmd;
    uint32_t len;
    void (*set_irq)(void *, int);
    void *irq_opaque;
    struct nvram_storage *storage;
};

static void *worker_main(void *opaque)
{
    struct tis_libtpms *d = opaque;
    pthread_mutex_lock(&d->lock);
    for (;;) {
        while (!d->have_command && !d->stopping)
            pthread_cond_wait(&d->cond, &d->lock);
        if (d->stopping)
            break;
        d->have_command = false;
        uint8_t loc = d->locality;
        const uint8_t *cmd = d->cmd;
        uint32_t len = d->len;
        pthread_mutex_unlock(&d->lock); /* tis_command_done takes the device lock */
        const uint8_t *rsp = NULL;
        uint32_t rsp_len = 0;
        tpm_backend_execute(cmd, len, loc, &rsp, &rsp_len);
        tis_command_done(d->tis, rsp, rsp_len);
        pthread_mutex_lock(&d->lock);
    }
    pthread_mutex_unlock(&d->lock);
    return NULL;
}

static void op_execute(void *opaque, uint8_t locality, const uint8_t *cmd, uint32_t len)
{
    struct tis_libtpms *d = opaque;
    pthread_mutex_lock(&d->lock);
    d->locality = locality;
    d->cmd = cmd;
    d->len = len;
    d->have_command = true;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
}

static void op_set_irq(void *opaque, int level)
{
    struct tis_libtpms *d = opaque;
    if (d->set_irq)
        d->set_irq(d->irq_opaque, level);
}

static void op_cancel(void *opaque)
{
    (void)opaque;
    tpm_backend_cancel();
}

static bool op_established(void *opaque)
{
    (void)opaque;
    bool established = false;
    return tpm_backend_get_established(&established) == 0 && established;
}

static void op_reset_established(void *opaque, uint8_t locality)
{
    (void)opaque;
    tpm_backend_reset_established(locality);
}

static void op_hash_start(void *opaque)
{
    (void)opaque;
    tpm_backend_hash_start();
}

static void op_hash_data(void *opaque, const uint8_t *data, uint32_t len)
{
    (void)opaque;
    tpm_backend_hash_data(data, len);
}

static void op_hash_end(void *opaque)
{
    (void)opaque;
    tpm_backend_hash_end();
}

static void close_storage(struct tis_libtpms *d)
{
    nvram_storage_close(d->storage);
}

static void destroy(void *opaque)
{
    struct tis_libtpms *d = opaque;
    pthread_mutex_lock(&d->lock);
    d->stopping = true;
    pthread_cond_signal(&d->cond);
    pthread_mutex_unlock(&d->lock);
    pthread_join(d->worker, NULL);
    tpm_backend_stop(true);
    close_storage(d);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->lock);
    free(d);
}

/* The image (created if absent), its NVRAM, and libtpms started on it. */
static int open_storage(struct tis_libtpms *d, int tpm_version, const char *path,
                        const struct nvram_key *key, struct nv_error *err)
{
    struct nvram_storage_options so = {.spec = path, .create = true};
    d->storage = nvram_storage_open(&so, err);
    if (!d->storage)
        return err->code;
    struct nvram_options no = {.tpm_version = tpm_version, .format_blank = true, .key = key};
    if (nvram_storage_open_nvram(d->storage, &no, err) < 0)
        return err->code;
    struct tpm_backend_options bo = {
        .tpm_version = tpm_version, .nvram = nvram_storage_nvram(d->storage), .debug_fd = -1};
    if (tpm_backend_init(&bo, err) < 0)
        return err->code;
    if (tpm_backend_start(false) != 0)
        return nv_error_set(err, -EIO, "%s: libtpms could not start the TPM", path);
    return 0;
}

struct nvram_key *tis_key_new(const char *spec, struct nv_error *err)
{
    struct nvram_key *key = nv_secret_alloc(sizeof(*key));
    if (!key) {
        nv_error_set(err, errno, "cannot allocate memory for a key");
        return NULL;
    }
    if (nvram_key_parse(spec, key, err) < 0) {
        tis_key_free(key);
        return NULL;
    }
    return key;
}

void tis_key_free(struct nvram_key *key)
{
    if (key)
        nv_secret_free(key, sizeof(*key)); /* wipes */
}

struct tis *tis_new_libtpms(const struct tis_config *cfg, const char *path,
                            const struct nvram_key *key, void (*set_irq)(void *, int),
                            void *irq_opaque, struct nv_error *err)
{
    struct nv_error ignored = {0};
    if (!err)
        err = &ignored; /* open_storage reads the code back */
    static const struct tis_ops ops = {.execute = op_execute,
                                       .set_irq = op_set_irq,
                                       .cancel = op_cancel,
                                       .established = op_established,
                                       .reset_established = op_reset_established,
                                       .hash_start = op_hash_start,
                                       .hash_data = op_hash_data,
                                       .hash_end = op_hash_end};
    struct tis_libtpms *d = calloc(1, sizeof(*d));
    if (!d) {
        nv_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    d->set_irq = set_irq;
    d->irq_opaque = irq_opaque;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->cond, NULL);
    if (open_storage(d, cfg->tpm_version, path, key, err) < 0) {
        close_storage(d);
        free(d);
        return NULL;
    }
    d->tis = tis_new(cfg, &ops, d);
    if (!d->tis || pthread_create(&d->worker, NULL, worker_main, d) != 0) {
        nv_error_set(err, -ENOMEM, "tis: cannot make the device");
        tis_free(d->tis);
        tpm_backend_stop(true);
        close_storage(d);
        free(d);
        return NULL;
    }
    d->tis->destroy = destroy;
    d->tis->destroy_opaque = d;
    return d->tis;
}
