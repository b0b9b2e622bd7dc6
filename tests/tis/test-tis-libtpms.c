/* test-tis-libtpms.c - guest-driver sequences against a real TIS device
 * (tis_new_libtpms: libtpms on an NVRAM image): a Linux-tpm_tis-style
 * transmit (byte FIFO accesses, burstCount, Expect checks), a SeaBIOS-style
 * one (4-byte accesses), an interrupt-driven one, and the locality-4 hash
 * sequence. The answers are checked against the TPM's arithmetic (PCR extends
 * computed with OpenSSL), as the socket server's tests check them. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>

#include "nvram.h"
#include "tis.h"
#include "util.h"

enum {
    ACCESS = 0x00,
    INT_ENABLE = 0x08,
    INT_STATUS = 0x10,
    STS = 0x18,
    HASH_END = 0x20,
    FIFO = 0x24,
    HASH_START = 0x28
};
enum { EXPECT = 0x08, AVAIL = 0x10, GO = 0x20, READY = 0x40, VALID = 0x80 };

static struct tis *dev;
static char image[256];
static pthread_mutex_t irq_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t irq_cond = PTHREAD_COND_INITIALIZER;
static int irq_level;

static void on_irq(void *opaque, int level)
{
    (void)opaque;
    pthread_mutex_lock(&irq_lock);
    irq_level = level;
    pthread_cond_broadcast(&irq_cond);
    pthread_mutex_unlock(&irq_lock);
}

static uint32_t reg(int loc, uint32_t r)
{
    return (uint32_t)loc << 12 | r;
}

/* Poll until (reg & mask) == want, 10 s at most; the answer comes from
 * the device's worker thread. */
static void poll_for(int loc, uint32_t r, uint32_t mask, uint32_t want)
{
    for (int i = 0; i < 200000; i++) {
        if ((tis_mmio_read(dev, reg(loc, r), 4) & mask) == want)
            return;
        nanosleep(&(struct timespec){0, 50000}, NULL);
    }
    fail_msg("register 0x%x of locality %d: 0x%x never became 0x%x under mask 0x%x", r, loc,
             tis_mmio_read(dev, reg(loc, r), 4), want, mask);
}

static uint32_t burst(int loc)
{
    return tis_mmio_read(dev, reg(loc, STS + 1), 2);
}

struct driver {
    int locality;
    unsigned width; /* FIFO access size: 1 (Linux) or 4 (SeaBIOS-style) */
    bool use_irq;   /* wait for dataAvail's interrupt instead of polling */
};

static void fifo_put(const struct driver *d, const uint8_t *p, uint32_t n)
{
    if (d->width == 4 && n == 4)
        tis_mmio_write(dev, reg(d->locality, FIFO),
                       p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24, 4);
    else
        for (uint32_t i = 0; i < n; i++)
            tis_mmio_write(dev, reg(d->locality, FIFO), p[i], 1);
}

static void wait_response(const struct driver *d)
{
    if (!d->use_irq) {
        poll_for(d->locality, STS, VALID | AVAIL, VALID | AVAIL);
        return;
    }
    pthread_mutex_lock(&irq_lock);
    while (!irq_level) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        assert_int_equal(pthread_cond_timedwait(&irq_cond, &irq_lock, &until), 0);
    }
    pthread_mutex_unlock(&irq_lock);
    assert_int_equal(tis_mmio_read(dev, reg(d->locality, INT_STATUS), 4) & 1, 1);
    tis_mmio_write(dev, reg(d->locality, INT_STATUS), 1, 4); /* acknowledge */
}

/* One command: locality, commandReady, bursts with Expect checks, tpmGo,
 * the response in bursts, commandReady, release. Returns its length. */
static uint32_t transmit(const struct driver *d, const uint8_t *cmd, uint32_t len, uint8_t *rsp)
{
    int loc = d->locality;
    tis_mmio_write(dev, reg(loc, ACCESS), 0x02, 1);
    poll_for(loc, ACCESS, 0xa0, 0xa0);
    if (d->use_irq)
        tis_mmio_write(dev, reg(loc, INT_ENABLE), 0x80000001, 4);
    tis_mmio_write(dev, reg(loc, STS), READY, 1);
    poll_for(loc, STS, READY, READY);
    uint32_t sent = 0;
    while (sent < len) {
        uint32_t n = burst(loc);
        assert_true(n > 0);
        n = n < len - sent ? n : len - sent;
        for (uint32_t i = 0; i < n; i += d->width)
            fifo_put(d, cmd + sent + i, n - i < d->width ? n - i : d->width);
        sent += n;
        poll_for(loc, STS, VALID, VALID);
        assert_int_equal((tis_mmio_read(dev, reg(loc, STS), 1) & EXPECT) != 0, sent < len);
    }
    tis_mmio_write(dev, reg(loc, STS), GO, 1);
    wait_response(d);
    uint32_t got = 0, size = 10;
    while (got < size) {
        uint32_t n = burst(loc);
        assert_true(n > 0);
        for (; n > 0 && got < size; n--)
            rsp[got++] = (uint8_t)tis_mmio_read(dev, reg(loc, FIFO), 1);
        if (got == 10)
            size = (uint32_t)rsp[2] << 24 | (uint32_t)rsp[3] << 16 | rsp[4] << 8 | rsp[5];
    }
    assert_int_equal(tis_mmio_read(dev, reg(loc, STS), 1) & AVAIL, 0); /* all read */
    tis_mmio_write(dev, reg(loc, STS), READY, 1);
    tis_mmio_write(dev, reg(loc, ACCESS), 0x20, 1);
    return got;
}

static uint32_t rc_of(const uint8_t *rsp)
{
    return (uint32_t)rsp[6] << 24 | (uint32_t)rsp[7] << 16 | rsp[8] << 8 | rsp[9];
}

static void sha256(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned n = 32;
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    EVP_DigestUpdate(c, a, alen);
    EVP_DigestUpdate(c, b, blen);
    EVP_DigestFinal_ex(c, out, &n);
    EVP_MD_CTX_free(c);
}

static void pcr_read(const struct driver *d, int pcr, uint8_t value[32])
{
    uint8_t cmd[20] = {0x80, 0x01, 0, 0, 0, 20, 0, 0, 0x01, 0x7e, 0, 0, 0, 1, 0x00, 0x0b, 3};
    cmd[17 + pcr / 8] = (uint8_t)(1 << (pcr % 8));
    uint8_t rsp[128];
    uint32_t n = transmit(d, cmd, sizeof(cmd), rsp);
    assert_int_equal(rc_of(rsp), 0);
    assert_int_equal(n, 62); /* one SHA-256 digest at the end */
    memcpy(value, rsp + 30, 32);
}

static void pcr_extend(const struct driver *d, int pcr, const uint8_t digest[32])
{
    uint8_t cmd[65] = {0x80, 0x02, 0, 0, 0,    65, 0, 0, 0x01, 0x82, 0, 0, 0, (uint8_t)pcr,
                       0,    0,    0, 9, 0x40, 0,  0, 9, 0,    0,    0, 0, 0, 0,
                       0,    0,    1, 0, 0x0b};
    memcpy(cmd + 33, digest, 32); /* password session for PCR, one SHA-256 digest */
    uint8_t rsp[64];
    transmit(d, cmd, sizeof(cmd), rsp);
    assert_int_equal(rc_of(rsp), 0);
}

/* Startup, GetRandom, PCR_Extend, PCR_Read through one driver style. */
static void run_sequence(const struct driver *d, int pcr)
{
    static const uint8_t startup[12] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0};
    static const uint8_t random8[12] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0, 8};
    uint8_t rsp[128], before[32], after[32], digest[32], want[32];
    uint32_t n = transmit(d, startup, sizeof(startup), rsp);
    assert_int_equal(n, 10);
    assert_true(rc_of(rsp) == 0 || rc_of(rsp) == 0x100); /* 0x100: already started */
    n = transmit(d, random8, sizeof(random8), rsp);
    assert_int_equal(rc_of(rsp), 0);
    assert_int_equal(n, 20);
    pcr_read(d, pcr, before);
    memset(digest, 0x5a ^ d->width, sizeof(digest));
    pcr_extend(d, pcr, digest);
    pcr_read(d, pcr, after);
    sha256(before, 32, digest, 32, want);
    assert_memory_equal(after, want, 32);
}

static void test_linux_style(void **state)
{
    (void)state;
    struct driver d = {.locality = 0, .width = 1};
    run_sequence(&d, 16);
}

static void test_seabios_style(void **state)
{
    (void)state;
    struct driver d = {.locality = 0, .width = 4};
    run_sequence(&d, 16);
}

static void test_interrupt_driven_locality2(void **state)
{
    (void)state;
    struct driver d = {.locality = 2, .width = 1, .use_irq = true};
    run_sequence(&d, 16);
    assert_int_equal(irq_level, 0);
}

static void test_locality4_hash(void **state)
{
    (void)state;
    struct driver d = {.locality = 0, .width = 1};
    /* _TPM_Hash_Start resets PCR 17; _TPM_Hash_End extends it with the digest
     * of the data; the TPM becomes established. */
    tis_mmio_write(dev, reg(4, HASH_START), 0, 1);
    tis_mmio_write(dev, reg(4, FIFO), 'a' | 'b' << 8 | 'c' << 16 | 'd' << 24, 4);
    tis_mmio_write(dev, reg(4, FIFO), 'e', 1);
    tis_mmio_write(dev, reg(4, HASH_END), 0, 1);
    uint8_t value[32], zeros[32] = {0}, data_digest[32], want[32];
    sha256("abcde", 5, "", 0, data_digest);
    sha256(zeros, 32, data_digest, 32, want);
    pcr_read(&d, 17, value);
    assert_memory_equal(value, want, 32);
    assert_int_equal(tis_mmio_read(dev, reg(0, ACCESS), 1) & 1, 0); /* established */
}

static void test_state_persists(void **state)
{
    (void)state;
    /* A new device is a power-on (a cold boot: no volatile state is kept), and
     * TPM2_Startup is only taken at locality 0 or 3. */
    struct driver d = {.locality = 0, .width = 1};
    static const uint8_t startup[12] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0};
    /* NV_DefineSpace of index 0x01500100 (8 bytes, owner read/write), empty auth. */
    static const uint8_t define[] = {0x80, 0x02, 0,    0, 0,    45, 0,    0,    0x01, 0x2a, 0x40, 0,
                                     0,    1,    0,    0, 0,    9,  0x40, 0,    0,    9,    0,    0,
                                     0,    0,    0,    0, 0,    0,  14,   0x01, 0x50, 0x01, 0x00, 0,
                                     0x0b, 0,    0x02, 0, 0x02, 0,  0,    0,    8};
    uint8_t rsp[64];
    tis_free(dev);
    struct nv_error err = {0};
    struct tis_config cfg = {.tpm_version = 2};
    dev = tis_new_libtpms(&cfg, image, NULL, on_irq, NULL, &err);
    assert_non_null(dev);
    transmit(&d, startup, sizeof(startup), rsp);
    assert_int_equal(rc_of(rsp), 0);
    transmit(&d, define, sizeof(define), rsp);
    assert_int_equal(rc_of(rsp), 0);
    /* Rule: the device's state lives in the image: a new device on it has the index. */
    tis_free(dev);
    dev = tis_new_libtpms(&cfg, image, NULL, on_irq, NULL, &err);
    assert_non_null(dev);
    transmit(&d, startup, sizeof(startup), rsp);
    assert_int_equal(rc_of(rsp), 0);
    transmit(&d, define, sizeof(define), rsp);
    assert_int_equal(rc_of(rsp), 0x14c); /* TPM_RC_NV_DEFINED */
}

/* The public API's key and error objects (tis_key_new, tis_error_*), on an
 * encrypted image: the key is needed at every open, and only then. */
static void test_encrypted_image(void **state)
{
    (void)state;
    char path[300], keyfile[300], spec[700];
    snprintf(path, sizeof(path), "%s.enc", image);
    snprintf(keyfile, sizeof(keyfile), "%s.key", image);
    FILE *f = fopen(keyfile, "w");
    assert_non_null(f);
    fputs("00112233445566778899aabbccddeeff\n", f);
    fclose(f);
    snprintf(spec, sizeof(spec), "file=%s,format=hex", keyfile);
    struct nv_error *err = tis_error_new();
    assert_non_null(err);
    assert_string_equal(tis_error_message(err), "");
    /* Rule: a key that cannot be read is an error that names it. */
    assert_null(tis_key_new("file=/nonexistent/key", err));
    assert_true(tis_error_code(err) < 0);
    assert_non_null(strstr(tis_error_message(err), "/nonexistent/key"));
    struct nvram_key *key = tis_key_new(spec, err);
    assert_non_null(key);
    tis_free(dev);
    struct tis_config cfg = {.tpm_version = 2};
    /* Rule: the key is only used while the device is made. */
    dev = tis_new_libtpms(&cfg, path, key, on_irq, NULL, err);
    tis_key_free(key);
    assert_non_null(dev);
    tis_free(dev);
    /* Rule: the image made with a key opens with it only. */
    dev = tis_new_libtpms(&cfg, path, NULL, on_irq, NULL, err);
    assert_null(dev);
    assert_int_equal(tis_error_code(err), -ENOKEY);
    snprintf(spec, sizeof(spec), "pwdfile=%s", keyfile); /* another key */
    key = tis_key_new(spec, err);
    assert_non_null(key);
    assert_null(tis_new_libtpms(&cfg, path, key, on_irq, NULL, err));
    assert_int_equal(tis_error_code(err), -EKEYREJECTED);
    tis_key_free(key);
    snprintf(spec, sizeof(spec), "file=%s,format=hex", keyfile);
    key = tis_key_new(spec, err);
    dev = tis_new_libtpms(&cfg, path, key, on_irq, NULL, NULL); /* err may be NULL */
    tis_key_free(key);
    assert_non_null(dev);
    tis_error_free(err);
    unlink(path);
    unlink(keyfile);
}

static int setup(void **state)
{
    (void)state;
    const char *dir = getenv("NVTPM_TEST_DIR");
    snprintf(image, sizeof(image), "%s/tis-XXXXXX", dir ? dir : "/tmp");
    int fd = mkstemp(image);
    assert_true(fd >= 0);
    close(fd);
    unlink(image); /* tis_new_libtpms creates it */
    struct nv_error err = {0};
    struct tis_config cfg = {.tpm_version = 2};
    dev = tis_new_libtpms(&cfg, image, NULL, on_irq, NULL, &err);
    if (!dev)
        fail_msg("tis_new_libtpms: %s", err.msg);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tis_free(dev);
    unlink(image);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linux_style),
        cmocka_unit_test(test_seabios_style),
        cmocka_unit_test(test_interrupt_driven_locality2),
        cmocka_unit_test(test_locality4_hash),
        cmocka_unit_test(test_state_persists),
        cmocka_unit_test(test_encrypted_image),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
