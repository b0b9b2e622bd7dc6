/* bench-tpm.c - the server benchmark's client, and its two ceilings.
 *
 *   bench-tpm client ADDR CMD N    one raw-socket client, N commands on one
 *                                  connection; prints commands per second
 *   bench-tpm wait ADDR            until a first GetRandom is answered
 *   bench-tpm inproc CMD N         libtpms called in-process (state in memory)
 *   bench-tpm echo ADDR            a trivial server: reads a command, answers
 *                                  10 bytes of success at once
 *   bench-tpm syncloop FILE SIZE N the fdatasync ceiling: N times one pwrite of
 *                                  SIZE bytes and one fdatasync, alternating
 *                                  between two places in FILE (as nvtpm's two
 *                                  state slots); prints writes per second
 * ADDR: tcp:PORT or unix:PATH. CMD: getrandom, pcrextend or nvwrite (a
 * 32-byte write to an NV index defined first, different bytes every time: a
 * write of what is there already changes nothing and persists nothing). */
#include <errno.h>
#include <fcntl.h>
#include <libtpms/tpm_error.h>
#include <libtpms/tpm_library.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define NV_INDEX 0x01500100u

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* An empty password session (TPM_RS_PW), 9 bytes, after its 4-byte size. */
static size_t pw_session(uint8_t *p)
{
    nv_put_be32(p, 9);
    nv_put_be32(p + 4, 0x40000009);
    memset(p + 8, 0, 5); /* nonce size, attributes, hmac size */
    return 13;
}

static size_t build(const char *cmd, uint8_t *c)
{
    size_t n;
    if (strcmp(cmd, "getrandom") == 0) {
        nv_put_be16(c, 0x8001);
        nv_put_be32(c + 6, 0x17b);
        nv_put_be16(c + 10, 8);
        n = 12;
    } else if (strcmp(cmd, "pcrextend") == 0) {
        nv_put_be16(c, 0x8002);
        nv_put_be32(c + 6, 0x182);
        nv_put_be32(c + 10, 16); /* PCR 16, the debug PCR */
        n = 14 + pw_session(c + 14);
        nv_put_be32(c + n, 1);
        nv_put_be16(c + n + 4, 0x000b);
        memset(c + n + 6, 0x42, 32);
        n += 38;
    } else if (strcmp(cmd, "nvdefine") == 0) {
        nv_put_be16(c, 0x8002);
        nv_put_be32(c + 6, 0x12a);
        nv_put_be32(c + 10, 0x40000001); /* owner */
        n = 14 + pw_session(c + 14);
        nv_put_be16(c + n, 0); /* auth */
        nv_put_be16(c + n + 2, 14);
        nv_put_be32(c + n + 4, NV_INDEX);
        nv_put_be16(c + n + 8, 0x000b);
        nv_put_be32(c + n + 10, 0x00020002); /* ownerread | ownerwrite */
        nv_put_be16(c + n + 14, 0);
        nv_put_be16(c + n + 16, 64);
        n += 18;
    } else if (strcmp(cmd, "nvwrite") == 0) {
        nv_put_be16(c, 0x8002);
        nv_put_be32(c + 6, 0x137);
        nv_put_be32(c + 10, 0x40000001);
        nv_put_be32(c + 14, NV_INDEX);
        n = 18 + pw_session(c + 18);
        nv_put_be16(c + n, 32);
        memset(c + n + 2, 0x5a, 32);
        nv_put_be16(c + n + 34, 0);
        n += 36;
    } else {
        fprintf(stderr, "bench-tpm: unknown command %s\n", cmd);
        exit(2);
    }
    nv_put_be32(c + 2, (uint32_t)n);
    return n;
}

static int connect_to(const char *addr)
{
    int fd;
    if (strncmp(addr, "tcp:", 4) == 0) {
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)atoi(addr + 4)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int one = 1;
        fd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(fd);
            return -1;
        }
    } else {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", addr + 5);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

static int full(int fd, void *buf, size_t len, bool writing)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One command, its response; returns the response code or -1. */
static long transact(int fd, const uint8_t *cmd, size_t len)
{
    uint8_t resp[4096];
    if (full(fd, (void *)cmd, len, true) < 0 || full(fd, resp, 10, false) < 0)
        return -1;
    uint32_t size = nv_be32(resp + 2);
    if (size < 10 || size > sizeof(resp) || full(fd, resp + 10, size - 10, false) < 0)
        return -1;
    return nv_be32(resp + 6);
}

/* NV_Write's data ends 2 bytes before the command (the offset follows it). */
static void vary(const char *name, uint8_t *cmd, size_t len, long i)
{
    if (strcmp(name, "nvwrite") == 0)
        nv_put_be32(cmd + len - 2 - 32, (uint32_t)i);
}

static int client(const char *addr, const char *name, long n)
{
    uint8_t cmd[256];
    int fd = connect_to(addr);
    if (fd < 0)
        return fprintf(stderr, "bench-tpm: cannot connect to %s\n", addr), 1;
    if (strcmp(name, "nvwrite") == 0) {
        long rc = transact(fd, cmd, build("nvdefine", cmd));
        if (rc != 0 && (rc & 0xfff) != 0x14c) /* NV_DEFINED: from an earlier round */
            return fprintf(stderr, "bench-tpm: NV_DefineSpace: 0x%lx\n", rc), 1;
    }
    size_t len = build(name, cmd);
    double t0 = now();
    for (long i = 0; i < n; i++) {
        vary(name, cmd, len, i);
        long rc = transact(fd, cmd, len);
        if (rc != 0)
            return fprintf(stderr, "bench-tpm: %s: 0x%lx\n", name, rc), 1;
    }
    printf("%.0f\n", (double)n / (now() - t0));
    close(fd);
    return 0;
}

static int wait_first(const char *addr)
{
    uint8_t cmd[64];
    size_t len = build("getrandom", cmd);
    for (int i = 0; i < 20000; i++) {
        int fd = connect_to(addr);
        if (fd >= 0) {
            long rc = transact(fd, cmd, len);
            close(fd);
            if (rc == 0)
                return 0;
        }
        usleep(200);
    }
    return 1;
}

/* ---- in-process ceiling: libtpms with its state in memory ------------------------------ */

static unsigned char *mem_blob[3];
static uint32_t mem_len[3];

static int blob_index(const char *name)
{
    return strcmp(name, "permall") == 0 ? 0 : strcmp(name, "volatilestate") == 0 ? 1 : 2;
}

static TPM_RESULT mem_init(void)
{
    return TPM_SUCCESS;
}

static TPM_RESULT mem_load(unsigned char **data, uint32_t *len, uint32_t n, const char *name)
{
    (void)n;
    int i = blob_index(name);
    if (!mem_blob[i])
        return TPM_RETRY;
    *data = malloc(mem_len[i]);
    memcpy(*data, mem_blob[i], mem_len[i]);
    *len = mem_len[i];
    return TPM_SUCCESS;
}

static TPM_RESULT mem_store(const unsigned char *data, uint32_t len, uint32_t n, const char *name)
{
    (void)n;
    int i = blob_index(name);
    free(mem_blob[i]);
    mem_blob[i] = malloc(len);
    memcpy(mem_blob[i], data, len);
    mem_len[i] = len;
    return TPM_SUCCESS;
}

static TPM_RESULT mem_delete(uint32_t n, const char *name, TPM_BOOL must)
{
    (void)n;
    (void)must;
    int i = blob_index(name);
    free(mem_blob[i]);
    mem_blob[i] = NULL;
    return TPM_SUCCESS;
}

static long process(unsigned char **resp, uint32_t *cap, const uint8_t *cmd, size_t len)
{
    uint32_t size = 0;
    if (TPMLIB_Process(resp, &size, cap, (unsigned char *)cmd, (uint32_t)len) != TPM_SUCCESS)
        return -1;
    return nv_be32(*resp + 6);
}

static int inproc(const char *name, long n)
{
    static struct libtpms_callbacks cbs = {.sizeOfStruct = sizeof(cbs),
                                           .tpm_nvram_init = mem_init,
                                           .tpm_nvram_loaddata = mem_load,
                                           .tpm_nvram_storedata = mem_store,
                                           .tpm_nvram_deletename = mem_delete};
    uint8_t cmd[256];
    unsigned char *resp = NULL;
    uint32_t cap = 0;
    TPMLIB_ChooseTPMVersion(TPMLIB_TPM_VERSION_2);
    TPMLIB_RegisterCallbacks(&cbs);
    if (TPMLIB_MainInit() != TPM_SUCCESS)
        return 1;
    uint8_t startup[12] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0};
    process(&resp, &cap, startup, sizeof(startup));
    if (strcmp(name, "nvwrite") == 0)
        process(&resp, &cap, cmd, build("nvdefine", cmd));
    size_t len = build(name, cmd);
    double t0 = now();
    for (long i = 0; i < n; i++)
        if ((vary(name, cmd, len, i), process(&resp, &cap, cmd, len)) != 0)
            return fprintf(stderr, "bench-tpm: in-process %s failed\n", name), 1;
    printf("%.0f\n", (double)n / (now() - t0));
    TPMLIB_Terminate();
    free(resp);
    return 0;
}

/* ---- echo ceiling ----------------------------------------------------------------------- */

static int echo_server(const char *addr)
{
    int lfd;
    if (strncmp(addr, "tcp:", 4) == 0) {
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)atoi(addr + 4)),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int one = 1;
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return 1;
    } else {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", addr + 5);
        unlink(sa.sun_path);
        lfd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
            return 1;
    }
    listen(lfd, 4);
    static const uint8_t ok[10] = {0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0};
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        uint8_t buf[4096];
        while (full(fd, buf, 6, false) == 0) {
            uint32_t size = nv_be32(buf + 2);
            if (size < 10 || size > sizeof(buf) || full(fd, buf + 6, size - 6, false) < 0 ||
                full(fd, (void *)ok, sizeof(ok), true) < 0)
                break;
        }
        close(fd);
    }
}

/* ---- fdatasync ceiling ----------------------------------------------------------------- */

static int syncloop(const char *path, long size, long n)
{
    const off_t second = 1 << 20; /* the two places, 1 MiB apart, written once first */
    if (size <= 0 || size > second)
        return fprintf(stderr, "bench-tpm: syncloop: size 1 to %ld\n", (long)second), 2;
    uint8_t *buf = calloc(1, (size_t)second);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (!buf || fd < 0)
        return perror(path), 1;
    for (int k = 0; k < 2; k++)
        if (pwrite(fd, buf, (size_t)second, k * second) != second)
            return perror(path), 1;
    if (fdatasync(fd) < 0)
        return perror(path), 1;
    double t0 = now();
    for (long i = 0; i < n; i++) {
        nv_put_be32(buf, (uint32_t)i); /* different bytes every time, as a state slot */
        if (pwrite(fd, buf, (size_t)size, (i & 1) * second) != size || fdatasync(fd) < 0)
            return perror(path), 1;
    }
    printf("%.0f\n", (double)n / (now() - t0));
    close(fd);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "client") == 0)
        return client(argv[2], argv[3], atol(argv[4]));
    if (argc == 3 && strcmp(argv[1], "wait") == 0)
        return wait_first(argv[2]);
    if (argc == 4 && strcmp(argv[1], "inproc") == 0)
        return inproc(argv[2], atol(argv[3]));
    if (argc == 3 && strcmp(argv[1], "echo") == 0)
        return echo_server(argv[2]);
    if (argc == 5 && strcmp(argv[1], "syncloop") == 0)
        return syncloop(argv[2], atol(argv[3]), atol(argv[4]));
    fprintf(stderr, "usage: see the header of bench-tpm.c\n");
    return 2;
}
