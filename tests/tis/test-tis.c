/* test-tis.c - conformance of the TIS register model (tis/tis.c) with the
 * TCG PC Client PTP FIFO interface, against a scripted backend. Each test
 * names the rule it checks. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tis.h"
#include "util.h"

enum {
    ACCESS = 0x00,
    INT_ENABLE = 0x08,
    INT_VECTOR = 0x0c,
    INT_STATUS = 0x10,
    CAP = 0x14,
    STS = 0x18,
    HASH_END = 0x20,
    FIFO = 0x24,
    HASH_START = 0x28,
    IFACE = 0x30,
    XFIFO = 0x80,
    DID_VID = 0xf00,
    RID = 0xf04
};
enum {
    A_ESTABLISHMENT = 0x01,
    A_REQUEST = 0x02,
    A_PENDING = 0x04,
    A_SEIZE = 0x08,
    A_SEIZED = 0x10,
    A_ACTIVE = 0x20,
    A_VALID = 0x80
};
enum {
    S_RETRY = 0x02,
    S_SELFTEST = 0x04,
    S_EXPECT = 0x08,
    S_AVAIL = 0x10,
    S_GO = 0x20,
    S_READY = 0x40,
    S_VALID = 0x80
};
#define S_CANCEL    (1u << 24)
#define S_RESET_EST (1u << 25)

/* The scripted backend: records what the device asks; answers at once
 * (auto_answer) or when the test calls tis_command_done. */
static struct backend {
    int executes, cancels, resets, irq_level, irq_changes;
    uint8_t last_locality, reset_locality;
    uint8_t cmd[TIS_BUFFER_MAX];
    uint32_t cmd_len;
    bool auto_answer, established;
    uint8_t answer[64];
    uint32_t answer_len;
    int hash_starts, hash_ends;
    uint8_t hashed[64];
    uint32_t hashed_len;
} be;

static struct tis *tis;

static void op_execute(void *o, uint8_t loc, const uint8_t *cmd, uint32_t len)
{
    (void)o;
    be.executes++;
    be.last_locality = loc;
    memcpy(be.cmd, cmd, len);
    be.cmd_len = len;
    if (be.auto_answer)
        tis_command_done(tis, be.answer, be.answer_len);
}
static void op_irq(void *o, int level)
{
    (void)o;
    be.irq_level = level;
    be.irq_changes++;
}
static void op_cancel(void *o)
{
    (void)o, be.cancels++;
}
static bool op_established(void *o)
{
    return (void)o, be.established;
}
static void op_reset_est(void *o, uint8_t loc)
{
    (void)o, be.resets++, be.reset_locality = loc;
}
static void op_hash_start(void *o)
{
    (void)o, be.hash_starts++;
}
static void op_hash_data(void *o, const uint8_t *d, uint32_t n)
{
    (void)o;
    memcpy(be.hashed + be.hashed_len, d, n);
    be.hashed_len += n;
}
static void op_hash_end(void *o)
{
    (void)o, be.hash_ends++;
}

static const struct tis_ops ops = {op_execute,   op_irq,        op_cancel,    op_established,
                                   op_reset_est, op_hash_start, op_hash_data, op_hash_end};

static struct tis *make(int version, uint32_t buffer_size)
{
    memset(&be, 0, sizeof(be));
    be.auto_answer = true;
    /* A 14-byte TPM 2 success response. */
    static const uint8_t ok[14] = {0x80, 0x01, 0, 0, 0, 14, 0, 0, 0, 0, 0xa1, 0xa2, 0xa3, 0xa4};
    memcpy(be.answer, ok, sizeof(ok));
    be.answer_len = sizeof(ok);
    struct tis_config cfg = {.tpm_version = version, .buffer_size = buffer_size, .irq_vector = 5};
    tis = tis_new(&cfg, &ops, NULL);
    assert_non_null(tis);
    return tis;
}

static int setup2(void **state)
{
    (void)state, make(2, 0);
    return 0;
}
static int setup1(void **state)
{
    (void)state, make(1, 0);
    return 0;
}
static int teardown(void **state)
{
    (void)state, tis_free(tis);
    return 0;
}

static uint32_t rd(int loc, uint32_t reg, unsigned size)
{
    return tis_mmio_read(tis, (uint64_t)loc << 12 | reg, size);
}
static void wr(int loc, uint32_t reg, uint32_t val, unsigned size)
{
    tis_mmio_write(tis, (uint64_t)loc << 12 | reg, val, size);
}

static void activate(int loc)
{
    wr(loc, ACCESS, A_REQUEST, 1);
    assert_true(rd(loc, ACCESS, 1) & A_ACTIVE);
}

static const uint8_t get_random[12] = {0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x7b, 0x00, 0x08};

static void write_command(int loc, const uint8_t *cmd, uint32_t len)
{
    for (uint32_t i = 0; i < len; i++)
        wr(loc, FIFO, cmd[i], 1);
}

/* Request the locality, commandReady, the command, tpmGo. */
static void send(int loc, const uint8_t *cmd, uint32_t len)
{
    activate(loc);
    wr(loc, STS, S_READY, 1);
    write_command(loc, cmd, len);
    wr(loc, STS, S_GO, 1);
}

/* ---- identification and access sizes ------------------------------------------------- */

static void test_identification_tpm2(void **state)
{
    (void)state;
    /* Rule: TPM 2.0 registers carry family 2.0 values (reference/tis.md, QEMU's). */
    assert_int_equal(rd(0, CAP, 4), 0x30000697);
    assert_int_equal(rd(0, IFACE, 4), 0x00002100);
    assert_int_equal(rd(0, DID_VID, 4), 0x00011014);
    assert_int_equal(rd(0, RID, 1), 1);
    assert_int_equal(rd(0, INT_VECTOR, 1), 5);
    activate(0);
    assert_int_equal(rd(0, STS, 4) >> 26 & 3, 1); /* STS family bits: 2.0 */
}

static void test_identification_tpm1(void **state)
{
    (void)state;
    /* Rule: TPM 1.2 values, no family bits, INTERFACE_ID all ones. */
    assert_int_equal(rd(0, CAP, 4), 0x20000697);
    assert_int_equal(rd(0, IFACE, 4), 0xffffffff);
    activate(0);
    assert_int_equal(rd(0, STS, 4) >> 26 & 3, 0);
}

static void test_configured_ids(void **state)
{
    (void)state;
    tis_free(tis);
    struct tis_config cfg = {
        .tpm_version = 2, .vendor_id = 0x1234, .device_id = 0x5678, .revision_id = 9};
    tis = tis_new(&cfg, &ops, NULL);
    /* Rule: DID/VID/RID are configurable. */
    assert_int_equal(rd(3, DID_VID, 4), 0x56781234);
    assert_int_equal(rd(3, RID, 1), 9);
}

static void test_sub_register_access(void **state)
{
    (void)state;
    uint32_t whole = rd(0, DID_VID, 4);
    /* Rule: 1- and 2-byte reads anywhere inside a register see its bytes. */
    for (unsigned b = 0; b < 4; b++)
        assert_int_equal(rd(0, DID_VID + b, 1), whole >> (8 * b) & 0xff);
    assert_int_equal(rd(0, DID_VID + 2, 2), whole >> 16);
    /* Rule: other sizes, and accesses across a register, read as all ones. */
    assert_int_equal(rd(0, DID_VID, 3), 0xffffffff);
    assert_int_equal(rd(0, DID_VID + 2, 4), 0xffffffff);
    assert_int_equal(tis_mmio_read(tis, 0x5000, 4), 0xffffffff); /* past the window */
}

/* ---- locality arbitration ------------------------------------------------------------- */

static void test_reset_access(void **state)
{
    (void)state;
    /* Rule: after reset no locality is active, tpmRegValidSts is set, and the
     * establishment bit reads 1 while the flag is not set. */
    for (int l = 0; l < TIS_LOCALITIES; l++)
        assert_int_equal(rd(l, ACCESS, 1), A_VALID | A_ESTABLISHMENT);
    be.established = true;
    assert_int_equal(rd(0, ACCESS, 1), A_VALID);
    /* Rule: STS of a locality that is not active reads all ones. */
    assert_int_equal(rd(0, STS, 4), 0xffffffff);
}

static void test_request_and_release(void **state)
{
    (void)state;
    activate(1);
    /* Rule: requestUse while another is active makes it pending. */
    wr(2, ACCESS, A_REQUEST, 1);
    wr(3, ACCESS, A_REQUEST, 1);
    assert_false(rd(2, ACCESS, 1) & A_ACTIVE);
    assert_true(rd(2, ACCESS, 1) & A_REQUEST);
    assert_true(rd(1, ACCESS, 1) & A_PENDING); /* someone else waits */
    /* Rule: releasing passes the locality to the highest requester. */
    wr(1, ACCESS, A_ACTIVE, 1);
    assert_true(rd(3, ACCESS, 1) & A_ACTIVE);
    assert_false(rd(1, ACCESS, 1) & A_ACTIVE);
    /* Rule: a requester that gives up clears its request by writing activeLocality. */
    wr(2, ACCESS, A_ACTIVE, 1);
    assert_false(rd(2, ACCESS, 1) & A_REQUEST);
    wr(3, ACCESS, A_ACTIVE, 1);
    for (int l = 0; l < TIS_LOCALITIES; l++)
        assert_false(rd(l, ACCESS, 1) & A_ACTIVE);
}

static void test_seize(void **state)
{
    (void)state;
    activate(1);
    /* Rule: Seize from a lower locality is ignored. */
    wr(0, ACCESS, A_SEIZE, 1);
    assert_true(rd(1, ACCESS, 1) & A_ACTIVE);
    /* Rule: Seize from a higher one takes over; the loser sees beenSeized. */
    wr(3, ACCESS, A_SEIZE, 1);
    assert_true(rd(3, ACCESS, 1) & A_ACTIVE);
    assert_int_equal(rd(1, ACCESS, 1) & (A_ACTIVE | A_SEIZED), A_SEIZED);
    /* Rule: Seize never reads back as set. */
    assert_false(rd(3, ACCESS, 1) & A_SEIZE);
    /* Rule: beenSeized is cleared by writing 1 to it. */
    wr(1, ACCESS, A_SEIZED, 1);
    assert_false(rd(1, ACCESS, 1) & A_SEIZED);
}

static void test_inactive_writes_ignored(void **state)
{
    (void)state;
    activate(0);
    /* Rule: STS, FIFO and interrupt writes count only from the active locality. */
    wr(1, STS, S_READY, 1);
    wr(1, INT_ENABLE, 0x80000001, 4);
    assert_int_equal(rd(1, INT_ENABLE, 4) & 0x80000001, 0);
    wr(0, STS, S_READY, 1);
    wr(1, FIFO, 0x80, 1);
    assert_int_equal(rd(0, STS, 4) & (S_EXPECT | S_READY), S_READY); /* no byte arrived */
}

/* ---- the command state machine -------------------------------------------------------- */

static void test_command_cycle(void **state)
{
    (void)state;
    be.auto_answer = false;
    activate(0);
    /* Rule: commandReady moves IDLE to READY; burstCount is the free buffer. */
    wr(0, STS, S_READY, 1);
    assert_int_equal(rd(0, STS, 4) & 0xff, S_READY);
    assert_int_equal(rd(0, STS + 1, 2), TIS_BUFFER_MAX);
    /* Rule: the first byte starts reception with Expect and stsValid. */
    wr(0, FIFO, get_random[0], 1);
    assert_int_equal(rd(0, STS, 1), S_VALID | S_EXPECT);
    /* Rule: Expect stays while the header's size is not reached. */
    write_command(0, get_random + 1, 10);
    assert_true(rd(0, STS, 1) & S_EXPECT);
    assert_int_equal(rd(0, STS + 1, 2), TIS_BUFFER_MAX - 11);
    /* Rule: tpmGo with Expect set does nothing. */
    wr(0, STS, S_GO, 1);
    assert_int_equal(be.executes, 0);
    wr(0, FIFO, get_random[11], 1);
    assert_int_equal(rd(0, STS, 1), S_VALID);
    /* Rule: tpmGo sends exactly the command, at the active locality. */
    wr(0, STS, S_GO, 1);
    assert_int_equal(be.executes, 1);
    assert_int_equal(be.cmd_len, 12);
    assert_memory_equal(be.cmd, get_random, 12);
    assert_int_equal(be.last_locality, 0);
    /* Rule: FIFO reads during execution give 0xff; writes are dropped. */
    assert_int_equal(rd(0, FIFO, 1), 0xff);
    wr(0, FIFO, 0x55, 1);
    tis_command_done(tis, be.answer, be.answer_len);
    /* Rule: on completion STS = stsValid | dataAvail, burstCount = bytes to read. */
    assert_int_equal(rd(0, STS, 1), S_VALID | S_AVAIL);
    assert_int_equal(rd(0, STS + 1, 2), 14);
    uint8_t got[14];
    for (int i = 0; i < 14; i++)
        got[i] = (uint8_t)rd(0, FIFO, 1);
    assert_memory_equal(got, be.answer, 14);
    /* Rule: after the last byte dataAvail clears; more reads give 0xff. */
    assert_int_equal(rd(0, STS, 1), S_VALID);
    assert_int_equal(rd(0, FIFO, 1), 0xff);
    /* Rule: responseRetry replays the response from its start. */
    wr(0, STS, S_RETRY, 1);
    assert_int_equal(rd(0, XFIFO, 4), 0x00000180); /* 80 01 00 00, little-endian */
    /* Rule: commandReady in COMPLETION goes back to READY. */
    wr(0, STS, S_READY, 1);
    assert_int_equal(rd(0, STS, 1), S_READY);
}

static void test_four_byte_fifo(void **state)
{
    (void)state;
    activate(2);
    wr(2, STS, S_READY, 1);
    /* Rule: 4-byte FIFO accesses carry four bytes, lowest first (XDATA too). */
    for (int i = 0; i < 12; i += 4)
        wr(2, i == 8 ? XFIFO + 0x10 : FIFO,
           (uint32_t)get_random[i] | (uint32_t)get_random[i + 1] << 8 |
               (uint32_t)get_random[i + 2] << 16 | (uint32_t)get_random[i + 3] << 24,
           4);
    wr(2, STS, S_GO, 1);
    assert_int_equal(be.cmd_len, 12);
    assert_memory_equal(be.cmd, get_random, 12);
    assert_int_equal(be.last_locality, 2);
}

static void test_oversize_command(void **state)
{
    (void)state;
    tis_free(tis);
    make(2, 64);
    activate(0);
    wr(0, STS, S_READY, 1);
    uint8_t big[80];
    memset(big, 0x11, sizeof(big));
    memcpy(big, get_random, 6);
    big[4] = 1; /* claims 256+ bytes */
    /* Rule: a command longer than the buffer never overflows it: Expect
     * clears when the buffer is full and the rest is dropped. */
    for (size_t i = 0; i < sizeof(big); i++) {
        assert_true(rd(0, STS + 1, 2) <= 64 - (i < 64 ? i : 64));
        wr(0, FIFO, big[i], 1);
    }
    assert_int_equal(rd(0, STS, 1) & S_EXPECT, 0);
    wr(0, STS, S_GO, 1);
    assert_int_equal(be.cmd_len, 64);
}

static void test_byte_read_of_burst_count(void **state)
{
    (void)state;
    activate(0);
    wr(0, STS, S_READY, 1);
    /* Rule: a 1-byte read of burstCount never shows 0x100 free as 0 (no stall). */
    assert_int_equal(rd(0, STS + 1, 1), 0xff);
}

static void test_abort_in_reception(void **state)
{
    (void)state;
    activate(0);
    wr(0, STS, S_READY, 1);
    write_command(0, (const uint8_t *)"\x80\x01\x00\x00\x00\x20", 6);
    /* Rule: commandReady during reception aborts: READY again, buffer empty. */
    wr(0, STS, S_READY, 1);
    assert_int_equal(rd(0, STS, 1), S_READY);
    write_command(0, get_random, 12);
    wr(0, STS, S_GO, 1);
    assert_int_equal(be.cmd_len, 12);
}

static void test_abort_in_execution(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: commandReady during execution: the response, when it comes, is dropped. */
    wr(0, STS, S_READY, 1);
    tis_command_done(tis, be.answer, be.answer_len);
    assert_int_equal(rd(0, STS, 1), S_READY);
    assert_int_equal(rd(0, FIFO, 1), 0xff);
}

static void test_seize_during_execution(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: a seize during execution takes effect when the command ends, and
     * the response never reaches the seizing locality. */
    wr(2, ACCESS, A_SEIZE, 1);
    assert_true(rd(0, ACCESS, 1) & A_ACTIVE);
    tis_command_done(tis, be.answer, be.answer_len);
    assert_true(rd(2, ACCESS, 1) & A_ACTIVE);
    assert_int_equal(rd(2, STS, 1) & S_AVAIL, 0);
    assert_int_equal(rd(2, FIFO, 4), 0xffffffff);
    /* Rule: nor is it kept for the seized one when it gets the locality back. */
    wr(2, ACCESS, A_ACTIVE, 1);
    activate(0);
    assert_int_equal(rd(0, STS, 1) & S_AVAIL, 0);
    assert_int_equal(rd(0, FIFO, 1), 0xff);
}

static void test_reset_during_execution(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: a reset drops the running command's response; a new command's
     * tpmGo waits until the backend is free, then goes. */
    tis_reset(tis);
    send(1, get_random, 12);
    assert_int_equal(be.executes, 1);
    tis_command_done(tis, be.answer, be.answer_len); /* the old one */
    assert_int_equal(be.executes, 2);
    assert_int_equal(be.last_locality, 1);
    tis_command_done(tis, be.answer, be.answer_len);
    assert_int_equal(rd(1, STS, 1), S_VALID | S_AVAIL);
}

static void test_writes_during_execution(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: tpmGo, responseRetry and FIFO writes during execution change nothing. */
    wr(0, STS, S_GO, 1);
    wr(0, STS, S_RETRY, 1);
    wr(0, XFIFO, 0x12345678, 4);
    assert_int_equal(be.executes, 1);
    tis_command_done(tis, be.answer, be.answer_len);
    assert_int_equal(rd(0, STS + 1, 2), 14);
}

static void test_short_response(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: an answer shorter than a header never exposes the buffer (which
     * still holds the command): the guest reads a TPM failure response. */
    tis_command_done(tis, be.answer, 3);
    uint8_t got[10];
    for (int i = 0; i < 10; i++)
        got[i] = (uint8_t)rd(0, FIFO, 1);
    static const uint8_t failure[10] = {0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01};
    assert_memory_equal(got, failure, 10);
    assert_int_equal(rd(0, FIFO, 1), 0xff);
}

/* ---- TPM 2.0 bits, interrupts, locality 4 ------------------------------------------------ */

static void test_cancel(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: commandCancel during execution (TPM 2.0) reaches the backend. */
    wr(0, STS, S_CANCEL, 4);
    assert_int_equal(be.cancels, 1);
    tis_command_done(tis, be.answer, be.answer_len);
    /* Rule: outside execution it does nothing. */
    wr(0, STS, S_CANCEL, 4);
    assert_int_equal(be.cancels, 1);
}

static void test_no_cancel_tpm1(void **state)
{
    (void)state;
    be.auto_answer = false;
    send(0, get_random, 12);
    /* Rule: TPM 1.2 has no commandCancel or resetEstablishment bits. */
    wr(0, STS, S_CANCEL | S_RESET_EST, 4);
    assert_int_equal(be.cancels, 0);
    assert_int_equal(be.resets, 0);
}

static void test_reset_establishment(void **state)
{
    (void)state;
    activate(0);
    /* Rule: resetEstablishment counts only from locality 3 or 4. */
    wr(0, STS, S_RESET_EST, 4);
    assert_int_equal(be.resets, 0);
    wr(0, ACCESS, A_ACTIVE, 1);
    activate(3);
    wr(3, STS + 3, S_RESET_EST >> 24, 1);
    assert_int_equal(be.resets, 1);
    assert_int_equal(be.reset_locality, 3);
}

static void test_interrupts(void **state)
{
    (void)state;
    activate(0);
    /* Rule: enables and polarity are stored; reserved bits are not. */
    wr(0, INT_ENABLE, 0x80000000 | 0x18 | 0x87 | 0x7f00, 4);
    assert_int_equal(rd(0, INT_ENABLE, 4), 0x80000000 | 0x18 | 0x87);
    wr(0, INT_ENABLE, 0x80000000 | 0x01, 4); /* dataAvail only */
    send(0, get_random, 12);
    /* Rule: an enabled source raises the line and shows in INT_STATUS. */
    assert_int_equal(be.irq_level, 1);
    assert_int_equal(rd(0, INT_STATUS, 4), 0x01);
    /* Rule: INT_STATUS is write-1-to-clear; the line falls with it. */
    wr(0, INT_STATUS, 0x01, 4);
    assert_int_equal(rd(0, INT_STATUS, 4), 0);
    assert_int_equal(be.irq_level, 0);
    /* Rule: without the global enable nothing is raised. */
    wr(0, INT_ENABLE, 0x01, 4);
    wr(0, STS, S_READY, 1);
    write_command(0, get_random, 12);
    wr(0, STS, S_GO, 1);
    assert_int_equal(rd(0, INT_STATUS, 4), 0);
    assert_int_equal(be.irq_level, 0);
}

static void test_locality_change_interrupt(void **state)
{
    (void)state;
    activate(0);
    wr(0, INT_ENABLE, 0x80000004, 4);
    wr(0, ACCESS, A_ACTIVE, 1);
    assert_int_equal(be.irq_level, 0);
    /* Rule: localityChange is raised for the locality that becomes active,
     * when it enabled it. */
    activate(0);
    assert_int_equal(rd(0, INT_STATUS, 4), 0x04);
    assert_int_equal(be.irq_level, 1);
    wr(0, INT_STATUS, 0x04, 1);
    assert_int_equal(be.irq_level, 0);
}

static void test_locality4_hash(void **state)
{
    (void)state;
    /* Rule (PTP): HASH_START, HASH_DATA, HASH_END at locality 4 drive the
     * TPM's hash sequence; HASH_DATA outside a sequence is not hash data. */
    wr(4, FIFO, 0x99, 1);
    assert_int_equal(be.hashed_len, 0);
    wr(4, HASH_START, 0, 1);
    wr(4, FIFO, 0x64636261, 4);
    wr(4, FIFO, 0x65, 1);
    wr(4, HASH_END, 0, 1);
    assert_int_equal(be.hash_starts, 1);
    assert_int_equal(be.hash_ends, 1);
    assert_int_equal(be.hashed_len, 5);
    assert_memory_equal(be.hashed, "abcde", 5);
    /* Rule: the hash registers exist only at locality 4. */
    wr(0, HASH_START, 0, 1);
    assert_int_equal(be.hash_starts, 1);
}

static void test_self_test_done(void **state)
{
    (void)state;
    static const uint8_t self_test[11] = {0x80, 0x01, 0, 0, 0, 11, 0, 0, 0x01, 0x43, 0x01};
    send(1, self_test, sizeof(self_test));
    /* Rule: a successful self test sets selfTestDone, for every locality. */
    assert_true(rd(1, STS, 1) & S_SELFTEST);
    wr(1, STS, S_READY, 1);
    assert_true(rd(1, STS, 1) & S_SELFTEST);
    wr(1, ACCESS, A_ACTIVE, 1);
    activate(0);
    assert_true(rd(0, STS, 1) & S_SELFTEST);
}

/* ---- save and load ----------------------------------------------------------------------- */

static void test_save_load(void **state)
{
    (void)state;
    send(3, get_random, 12);
    uint8_t first = (uint8_t)rd(3, FIFO, 1);
    uint8_t *blob;
    size_t len;
    struct nv_error err = {0};
    assert_int_equal(tis_save(tis, &blob, &len, &err), 0);
    struct tis *old = tis;
    struct tis_config cfg = {.tpm_version = 2};
    tis = tis_new(&cfg, &ops, NULL);
    /* Rule: a loaded device continues where the saved one was. */
    assert_int_equal(tis_load(tis, blob, len, &err), 0);
    assert_true(rd(3, ACCESS, 1) & A_ACTIVE);
    assert_int_equal(rd(3, STS + 1, 2), 13);
    assert_int_equal(first, 0x80);
    assert_int_equal(rd(3, FIFO, 1), 0x01);
    /* Rule: any damage is refused and leaves the device as it was. */
    for (size_t i = 0; i < len; i += 97) {
        blob[i] ^= 0x20;
        assert_int_equal(tis_load(tis, blob, len, &err), -EINVAL);
        blob[i] ^= 0x20;
    }
    assert_int_equal(tis_load(tis, blob, len - 1, &err), -EINVAL);
    assert_int_equal(rd(3, STS + 1, 2), 12);
    /* Rule: a device with a different buffer or TPM version refuses it. */
    tis_free(tis);
    cfg.tpm_version = 1;
    tis = tis_new(&cfg, &ops, NULL);
    assert_int_equal(tis_load(tis, blob, len, &err), -EINVAL);
    free(blob);
    tis_free(tis);
    tis = old;
    /* Rule: saving while a command executes is refused (drain first). */
    be.auto_answer = false;
    wr(3, STS, S_READY, 1);
    write_command(3, get_random, 12);
    wr(3, STS, S_GO, 1);
    assert_int_equal(tis_save(tis, &blob, &len, &err), -EBUSY);
    tis_command_done(tis, be.answer, be.answer_len);
}

#define T2(f) cmocka_unit_test_setup_teardown(f, setup2, teardown)
#define T1(f) cmocka_unit_test_setup_teardown(f, setup1, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T2(test_identification_tpm2),
        T1(test_identification_tpm1),
        T2(test_configured_ids),
        T2(test_sub_register_access),
        T2(test_reset_access),
        T2(test_request_and_release),
        T2(test_seize),
        T2(test_inactive_writes_ignored),
        T2(test_command_cycle),
        T2(test_four_byte_fifo),
        T2(test_oversize_command),
        T2(test_byte_read_of_burst_count),
        T2(test_abort_in_reception),
        T2(test_abort_in_execution),
        T2(test_seize_during_execution),
        T2(test_reset_during_execution),
        T2(test_writes_during_execution),
        T2(test_short_response),
        T2(test_cancel),
        T1(test_no_cancel_tpm1),
        T2(test_reset_establishment),
        T2(test_interrupts),
        T2(test_locality_change_interrupt),
        T2(test_locality4_hash),
        T2(test_self_test_done),
        T2(test_save_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
