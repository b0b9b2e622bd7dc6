/* fuzz-data.c - libFuzzer target for the data channel's framing: the input is
 * what a client sends (raw TPM commands, the send-command prefix, garbage),
 * served by a real libtpms TPM 2.0 over a socketpair. The TPM's state lives in
 * a raw image in a memfd, formatted once. No crash, no hang, no leak.
 * Inputs with key-generating commands are skipped: an RSA key generation
 * takes seconds under the sanitizers and would be reported as a timeout;
 * the server's handling of them is covered by the tpm2-tools tests. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"
#include "tpm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static struct fdstash stash;
static struct bdrv_node *image;
static struct nvram *nvram;

/* At exit, before LeakSanitizer looks: the TPM stopped, the NVRAM and its
 * image closed. The NVRAM object lives in pages of its own (no-dump, for
 * key material) that LeakSanitizer does not scan, so what only it points
 * to would be reported as lost. */
static void close_tpm(void)
{
    tpm_backend_stop(false);
    nvram_close(nvram);
    bdrv_close(image);
    fdstash_cleanup(&stash);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct nv_error err = {0};
    int fd = memfd_create("fuzz-tpm", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, 4u << 20) < 0)
        abort();
    fdstash_init(&stash);
    fdstash_give(&stash, "img", fd, &err);
    struct bdrv_node *bs =
        bdrv_open_format("raw", "fd:img", BDRV_O_RDWR | BDRV_O_OWNER, &stash, &err);
    struct nvram_options no = {
        .tpm_version = 2, .format_blank = true, .no_sync = true, .warn = NULL};
    struct nvram *nv = bs ? nvram_open(bs, &no, &err) : NULL;
    struct tpm_backend_options bo = {
        .tpm_version = 2, .nvram = nv, .startup = TPM_STARTUP_CLEAR, .debug_fd = -1};
    if (!nv || tpm_backend_init(&bo, &err) < 0 || tpm_backend_start(false) != 0) {
        fprintf(stderr, "fuzz-data: %s\n", err.msg);
        abort();
    }
    image = bs;
    nvram = nv;
    atexit(close_tpm);
    return 0; /* the TPM lives as long as the fuzzer */
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Walk the stream as the server frames it; true if a frame generates keys. */
static bool generates_keys(const uint8_t *d, size_t n)
{
    size_t off = 0;
    while (n - off >= 10) {
        if (be32(d + off) == 8) { /* the send-command prefix */
            off += 9;
            continue;
        }
        uint32_t len = be32(d + off + 2), cc = be32(d + off + 6);
        if (cc == 0x131 || cc == 0x153 || cc == 0x191) /* CreatePrimary, Create, CreateLoaded */
            return true;
        if (len < 10)
            return false;
        off += len;
        if (off > n)
            return false;
    }
    return false;
}

/* The client side: reads the responses while the server writes them, so
 * that many small commands cannot fill the socket and stall both ends. */
static void *drain(void *arg)
{
    int fd = *(int *)arg;
    uint8_t sink[4096];
    while (read(fd, sink, sizeof(sink)) > 0)
        ;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int sv[2];
    pthread_t reader;
    if (generates_keys(data, size))
        return 0;
    if (size > 65536 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    if (write(sv[0], data, size) != (ssize_t)size)
        abort(); /* fits the socket buffer: the input is bounded */
    shutdown(sv[0], SHUT_WR);
    if (pthread_create(&reader, NULL, drain, &sv[0]) != 0)
        abort();
    tpm_server_serve_data(sv[1]);
    close(sv[1]);
    pthread_join(reader, NULL);
    close(sv[0]);
    return 0;
}
