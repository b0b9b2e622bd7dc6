/* tis.c - the PC Client PTP FIFO (TIS) register model: five localities
 * sharing one command/response buffer, the command state machine (idle,
 * ready, reception, execution, completion), locality arbitration with seize,
 * interrupts, and the locality-4 hash interface. The rules follow the TCG PC
 * Client PTP specification and QEMU's tpm-tis where the specification leaves
 * a choice; docs/tis.md lists where nvtpm differs from QEMU and why. */
#include "tis-internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define VALID(l) ((l) < TIS_LOCALITIES)

void tis_update_irq(struct tis *t)
{
    bool level = false;
    for (int l = 0; l < TIS_LOCALITIES; l++)
        if ((t->loc[l].inte & TIS_INT_ENABLED) && (t->loc[l].ints & t->loc[l].inte))
            level = true;
    if (level != t->irq_level) {
        t->irq_level = level;
        if (t->ops.set_irq)
            t->ops.set_irq(t->opaque, level);
    }
}

/* An interrupt source fires for loc: recorded (and the line raised) only
 * when loc enables it. */
static void raise_irq(struct tis *t, uint8_t loc, uint32_t sources)
{
    if (!VALID(loc) || !(t->loc[loc].inte & TIS_INT_ENABLED) || !(t->loc[loc].inte & sources))
        return;
    t->loc[loc].ints |= t->loc[loc].inte & sources;
    tis_update_irq(t);
}

/* The status bits, keeping selfTestDone, which only a reset clears. */
static void sts_set(struct tis_locality *l, uint32_t bits)
{
    l->sts = (l->sts & TIS_STS_SELFTEST_DONE) | bits;
}

/* loc's command or response does not outlive its turn: the buffer is shared.
 * (READY holds no data and stays, as in QEMU.) */
static void drop_work(struct tis *t, uint8_t loc)
{
    t->rw_offset = 0;
    if (t->loc[loc].state == TIS_READY)
        return;
    t->loc[loc].state = TIS_IDLE;
    sts_set(&t->loc[loc], 0);
}

static void set_active(struct tis *t, uint8_t next)
{
    bool change = t->active != next;
    if (change && VALID(t->active)) {
        struct tis_locality *old = &t->loc[t->active];
        bool seize = VALID(next) && (t->loc[next].access & TIS_ACC_SEIZE);
        old->access &= (uint8_t) ~(TIS_ACC_ACTIVE | (seize ? 0 : TIS_ACC_REQUEST_USE));
        if (seize)
            old->access |= TIS_ACC_BEEN_SEIZED;
        drop_work(t, t->active);
    }
    t->active = next;
    if (VALID(next)) {
        t->loc[next].access |= TIS_ACC_ACTIVE;
        t->loc[next].access &= (uint8_t) ~(TIS_ACC_REQUEST_USE | TIS_ACC_SEIZE);
    }
    if (change)
        raise_irq(t, next, TIS_INT_LOCALITY_CHANGED);
}

/* Abort what locality from does and make next active: from == next is
 * commandReady's abort (back to ready). Done at once, or when the
 * executing command completes (its response is then dropped). */
static void finish_abort(struct tis *t)
{
    uint8_t from = t->aborting, next = t->next;
    t->abort_pending = false;
    t->aborting = t->next = TIS_NO_LOCALITY;
    t->rw_offset = 0;
    if (VALID(from) && from == next) {
        t->loc[from].state = TIS_READY;
        sts_set(&t->loc[from], TIS_STS_COMMAND_READY);
        raise_irq(t, from, TIS_INT_COMMAND_READY);
        return;
    }
    if (VALID(from) && from != t->active)
        drop_work(t, from);
    set_active(t, next);
}

static void abort_and_switch(struct tis *t, uint8_t from, uint8_t next)
{
    t->aborting = from;
    t->next = next;
    t->abort_pending = true;
    if (!t->executing)
        finish_abort(t);
}

static void send_command(struct tis *t, uint8_t loc)
{
    uint32_t len = t->rw_offset;
    t->loc[loc].state = TIS_EXECUTION;
    t->executing = true;
    t->go_pending = false;
    t->exec_locality = loc;
    t->ordinal = len >= 10 ? nv_be32(t->buffer + 6) : 0;
    memcpy(t->cmd, t->buffer, len);
    t->ops.execute(t->opaque, loc, t->cmd, len);
}

/* ---- reads ------------------------------------------------------------------------- */

static uint32_t read_access(struct tis *t, uint8_t loc)
{
    uint32_t val = t->loc[loc].access & (uint8_t)~TIS_ACC_SEIZE;
    for (int l = 0; l < TIS_LOCALITIES; l++)
        if (l != loc && (t->loc[l].access & TIS_ACC_REQUEST_USE))
            val |= TIS_ACC_PENDING_REQUEST;
    bool established = t->ops.established ? t->ops.established(t->opaque) : true;
    return val | (established ? 0 : TIS_ACC_ESTABLISHMENT); /* reads 1 when NOT established */
}

static uint32_t read_sts(struct tis *t, uint8_t loc, unsigned size)
{
    if (t->active != loc)
        return 0xffffffff;
    uint32_t left = (t->loc[loc].sts & TIS_STS_DATA_AVAIL) ? t->rsp_len - t->rw_offset
                                                           : t->buffer_size - t->rw_offset;
    if (size == 1 && left > 0xff)
        left = 0xff; /* a byte read of burstCount must not see 0x100 as 0 */
    uint32_t family = t->cfg.tpm_version == 2 ? TIS_STS_FAMILY_2_0 : 0;
    return left << 8 | t->loc[loc].sts | family;
}

static uint8_t fifo_read_byte(struct tis *t, uint8_t loc)
{
    if (!(t->loc[loc].sts & TIS_STS_DATA_AVAIL) || t->rw_offset >= t->rsp_len)
        return 0xff;
    uint8_t b = t->buffer[t->rw_offset++];
    if (t->rw_offset >= t->rsp_len) {
        sts_set(&t->loc[loc], TIS_STS_VALID);
        raise_irq(t, loc, TIS_INT_STS_VALID);
    }
    return b;
}

static uint32_t read_fifo(struct tis *t, uint8_t loc, unsigned size)
{
    if (t->active != loc)
        return 0xffffffff;
    uint32_t val = 0;
    for (unsigned i = 0; i < size; i++)
        val |= (uint32_t)fifo_read_byte(t, loc) << (8 * i);
    return val;
}

static uint32_t read_register(struct tis *t, uint8_t loc, uint32_t reg, unsigned size)
{
    bool tpm2 = t->cfg.tpm_version == 2;
    switch (reg) {
    case TIS_REG_ACCESS:
        return read_access(t, loc);
    case TIS_REG_INT_ENABLE:
        return t->loc[loc].inte;
    case TIS_REG_INT_VECTOR:
        return t->cfg.irq_vector;
    case TIS_REG_INT_STATUS:
        return t->loc[loc].ints;
    case TIS_REG_INTF_CAPABILITY:
        return tpm2 ? TIS_CAPABILITY_2_0 : TIS_CAPABILITY_1_2;
    case TIS_REG_STS:
        return read_sts(t, loc, size);
    case TIS_REG_INTERFACE_ID:
        return tpm2 ? TIS_INTERFACE_ID_2_0 : 0xffffffff;
    case TIS_REG_DID_VID:
        return (uint32_t)t->cfg.device_id << 16 | t->cfg.vendor_id;
    case TIS_REG_RID:
        return t->cfg.revision_id;
    default:
        return 0xffffffff;
    }
}

static bool is_fifo(uint32_t reg)
{
    return reg == TIS_REG_DATA_FIFO || (reg >= TIS_REG_XDATA_FIFO && reg < TIS_REG_XDATA_END);
}

/* A valid access: size 1, 2 or 4, inside the window, not across a register. */
static bool access_ok(uint64_t off, unsigned size)
{
    return (size == 1 || size == 2 || size == 4) && off < TIS_WINDOW_SIZE && (off & 3) + size <= 4;
}

uint32_t tis_mmio_read(struct tis *t, uint64_t off, unsigned size)
{
    if (!access_ok(off, size))
        return 0xffffffff;
    uint8_t loc = (uint8_t)(off >> 12);
    uint32_t reg = (uint32_t)off & 0xffc, shift = ((uint32_t)off & 3) * 8;
    uint32_t mask = size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
    pthread_mutex_lock(&t->lock);
    uint32_t val =
        is_fifo(reg) ? read_fifo(t, loc, size) : read_register(t, loc, reg, size) >> shift;
    pthread_mutex_unlock(&t->lock);
    return val & mask;
}

/* ---- writes ------------------------------------------------------------------------ */

static void write_access(struct tis *t, uint8_t loc, uint8_t val)
{
    if (val & TIS_ACC_SEIZE)
        val &= (uint8_t) ~(TIS_ACC_REQUEST_USE | TIS_ACC_ACTIVE);
    if (val & TIS_ACC_ACTIVE) {
        if (t->active == loc) { /* release: the highest requester takes over */
            uint8_t next = TIS_NO_LOCALITY;
            for (int l = TIS_LOCALITIES - 1; l >= 0 && next == TIS_NO_LOCALITY; l--)
                if (t->loc[l].access & TIS_ACC_REQUEST_USE)
                    next = (uint8_t)l;
            abort_and_switch(t, loc, next);
        } else {
            t->loc[loc].access &= (uint8_t)~TIS_ACC_REQUEST_USE;
        }
    }
    if (val & TIS_ACC_BEEN_SEIZED)
        t->loc[loc].access &= (uint8_t)~TIS_ACC_BEEN_SEIZED;
    if ((val & TIS_ACC_SEIZE) && (!VALID(t->active) || loc > t->active) &&
        !(t->loc[loc].access & TIS_ACC_SEIZE)) {
        bool higher = false;
        for (int l = loc + 1; l < TIS_LOCALITIES; l++)
            higher |= (t->loc[l].access & TIS_ACC_SEIZE) != 0;
        if (!higher) {
            for (int l = 0; l < loc; l++) /* a higher seize cancels the lower ones */
                t->loc[l].access &= (uint8_t)~TIS_ACC_SEIZE;
            t->loc[loc].access |= TIS_ACC_SEIZE;
            abort_and_switch(t, t->active, loc);
        }
    }
    if ((val & TIS_ACC_REQUEST_USE) && t->active != loc) {
        if (VALID(t->active) || t->abort_pending)
            t->loc[loc].access |= TIS_ACC_REQUEST_USE;
        else
            set_active(t, loc);
    }
}

static void command_ready(struct tis *t, uint8_t loc)
{
    struct tis_locality *l = &t->loc[loc];
    switch (l->state) {
    case TIS_IDLE:
        l->state = TIS_READY;
        sts_set(l, TIS_STS_COMMAND_READY);
        raise_irq(t, loc, TIS_INT_COMMAND_READY);
        break;
    case TIS_READY:
        t->rw_offset = 0;
        break;
    case TIS_RECEPTION:
    case TIS_EXECUTION:
        abort_and_switch(t, loc, loc);
        break;
    case TIS_COMPLETION:
        t->rw_offset = 0;
        l->state = TIS_READY;
        if (!(l->sts & TIS_STS_COMMAND_READY)) {
            sts_set(l, TIS_STS_COMMAND_READY);
            raise_irq(t, loc, TIS_INT_COMMAND_READY);
        }
        l->sts &= ~TIS_STS_DATA_AVAIL;
        break;
    }
}

static void write_sts(struct tis *t, uint8_t loc, uint32_t val)
{
    struct tis_locality *l = &t->loc[loc];
    if (t->cfg.tpm_version == 2) {
        if ((val & TIS_STS_COMMAND_CANCEL) && l->state == TIS_EXECUTION) {
            l->sts |= TIS_STS_COMMAND_CANCEL;
            if (t->ops.cancel)
                t->ops.cancel(t->opaque);
        }
        if ((val & TIS_STS_RESET_ESTABLISHMENT) && (loc == 3 || loc == 4) &&
            t->ops.reset_established)
            t->ops.reset_established(t->opaque, loc);
    }
    val &= TIS_STS_COMMAND_READY | TIS_STS_GO | TIS_STS_RESPONSE_RETRY;
    if (val == TIS_STS_COMMAND_READY) {
        command_ready(t, loc);
    } else if (val == TIS_STS_GO && l->state == TIS_RECEPTION && !(l->sts & TIS_STS_EXPECT)) {
        if (t->executing)
            t->go_pending = true; /* a dropped command still runs: send once it is done */
        else
            send_command(t, loc);
    } else if (val == TIS_STS_RESPONSE_RETRY && l->state == TIS_COMPLETION) {
        t->rw_offset = 0;
        sts_set(l, TIS_STS_VALID | TIS_STS_DATA_AVAIL);
    }
}

static void write_fifo(struct tis *t, uint8_t loc, uint32_t val, unsigned size)
{
    struct tis_locality *l = &t->loc[loc];
    if (l->state != TIS_READY && l->state != TIS_RECEPTION)
        return;
    if (l->state == TIS_READY) {
        l->state = TIS_RECEPTION;
        sts_set(l, TIS_STS_EXPECT | TIS_STS_VALID);
    }
    for (; (l->sts & TIS_STS_EXPECT) && size > 0; size--, val >>= 8) {
        if (t->rw_offset < t->buffer_size)
            t->buffer[t->rw_offset++] = (uint8_t)val;
        else
            sts_set(l, TIS_STS_VALID); /* full: no more expected */
    }
    if (t->rw_offset > 5 && (l->sts & TIS_STS_EXPECT)) {
        bool was_valid = (l->sts & TIS_STS_VALID) != 0;
        bool more = nv_be32(t->buffer + 2) > t->rw_offset;
        sts_set(l, more ? TIS_STS_EXPECT | TIS_STS_VALID : TIS_STS_VALID);
        if (!was_valid)
            raise_irq(t, loc, TIS_INT_STS_VALID);
    }
}

/* Locality 4's hash interface (PTP): HASH_START, HASH_DATA, HASH_END. */
static bool write_hash(struct tis *t, uint32_t reg, uint32_t val, unsigned size)
{
    if (reg == TIS_REG_HASH_START) {
        t->hashing = true;
        if (t->ops.hash_start)
            t->ops.hash_start(t->opaque);
    } else if (reg == TIS_REG_HASH_DATA && t->hashing) {
        uint8_t bytes[4];
        for (unsigned i = 0; i < size; i++)
            bytes[i] = (uint8_t)(val >> (8 * i));
        if (t->ops.hash_data)
            t->ops.hash_data(t->opaque, bytes, size);
    } else if (reg == TIS_REG_HASH_END && t->hashing) {
        t->hashing = false;
        if (t->ops.hash_end)
            t->ops.hash_end(t->opaque);
    } else {
        return false;
    }
    return true;
}

/* val and mask are shifted to the byte lanes the access covers. */
static void write_register(struct tis *t, uint8_t loc, uint32_t reg, uint32_t val, uint32_t mask,
                           unsigned shift, unsigned size)
{
    struct tis_locality *l = &t->loc[loc];
    if (reg == TIS_REG_ACCESS) {
        if (mask & 0xff)
            write_access(t, loc, (uint8_t)val);
        return;
    }
    if (t->active != loc) /* only the active locality's writes count */
        return;
    switch (reg) {
    case TIS_REG_INT_ENABLE:
        l->inte = (l->inte & ~mask) | (val & mask & TIS_INT_ENABLE_BITS);
        tis_update_irq(t);
        break;
    case TIS_REG_INT_STATUS:
        l->ints &= ~(val & mask & TIS_INT_SOURCES);
        tis_update_irq(t);
        break;
    case TIS_REG_STS:
        write_sts(t, loc, val & mask);
        break;
    default:
        if (is_fifo(reg))
            write_fifo(t, loc, val >> shift, size);
        break;
    }
}

void tis_mmio_write(struct tis *t, uint64_t off, uint32_t val, unsigned size)
{
    if (!access_ok(off, size))
        return;
    uint8_t loc = (uint8_t)(off >> 12);
    uint32_t reg = (uint32_t)off & 0xffc, shift = ((uint32_t)off & 3) * 8;
    uint32_t mask = (size == 4 ? 0xffffffffu : (1u << (8 * size)) - 1) << shift;
    val = (val << shift) & mask;
    pthread_mutex_lock(&t->lock);
    if (!(loc == 4 && write_hash(t, reg, val >> shift, size)))
        write_register(t, loc, reg, val, mask, shift, size);
    pthread_mutex_unlock(&t->lock);
}

/* ---- completion, reset, life ------------------------------------------------------------ */

static bool is_self_test(const struct tis *t)
{
    return t->cfg.tpm_version == 2 ? t->ordinal == 0x143                       /* TPM2_SelfTest */
                                   : t->ordinal == 0x50 || t->ordinal == 0x53; /* Full, Continue */
}

static void deliver(struct tis *t, uint8_t loc, const uint8_t *rsp, uint32_t len)
{
    t->rsp_len = len < t->buffer_size ? len : t->buffer_size;
    memcpy(t->buffer, rsp, t->rsp_len);
    t->rw_offset = 0;
    t->loc[loc].state = TIS_COMPLETION;
    sts_set(&t->loc[loc], TIS_STS_VALID | TIS_STS_DATA_AVAIL);
    raise_irq(t, loc, TIS_INT_DATA_AVAIL | TIS_INT_STS_VALID);
}

void tis_command_done(struct tis *t, const uint8_t *rsp, uint32_t len)
{
    pthread_mutex_lock(&t->lock);
    if (!t->executing) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    t->executing = false;
    uint8_t loc = t->exec_locality;
    if (is_self_test(t) && len >= 10 && nv_be32(rsp + 6) == 0)
        for (int l = 0; l < TIS_LOCALITIES; l++)
            t->loc[l].sts |= TIS_STS_SELFTEST_DONE;
    if (t->drop_response) {
        t->drop_response = false;
    } else if (t->abort_pending) {
        finish_abort(t);   /* the response goes nowhere */
    } else if (len < 10) { /* not a response: the guest gets a TPM failure */
        static const uint8_t fail2[10] = {0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x01};
        static const uint8_t fail1[10] = {0x00, 0xc4, 0, 0, 0, 10, 0, 0, 0x00, 0x09};
        deliver(t, loc, t->cfg.tpm_version == 2 ? fail2 : fail1, 10);
    } else {
        deliver(t, loc, rsp, len);
    }
    if (t->go_pending && VALID(t->active) && t->loc[t->active].state == TIS_RECEPTION)
        send_command(t, t->active);
    pthread_mutex_unlock(&t->lock);
}

static void reset_locked(struct tis *t)
{
    t->active = t->aborting = t->next = TIS_NO_LOCALITY;
    t->abort_pending = false;
    t->drop_response = t->executing; /* a running command's answer goes nowhere */
    t->go_pending = t->hashing = false;
    t->rw_offset = t->rsp_len = 0;
    for (int l = 0; l < TIS_LOCALITIES; l++)
        t->loc[l] = (struct tis_locality){
            .access = TIS_ACC_REG_VALID, .inte = TIS_INT_POLARITY_LOW_LEVEL, .state = TIS_IDLE};
    tis_update_irq(t);
}

void tis_reset(struct tis *t)
{
    pthread_mutex_lock(&t->lock);
    reset_locked(t);
    pthread_mutex_unlock(&t->lock);
}

struct tis *tis_new(const struct tis_config *cfg, const struct tis_ops *ops, void *opaque)
{
    if (!cfg || !ops || !ops->execute || (cfg->tpm_version != 1 && cfg->tpm_version != 2))
        return NULL;
    struct tis *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&t->lock, &attr);
    pthread_mutexattr_destroy(&attr);
    t->cfg = *cfg;
    t->cfg.vendor_id = cfg->vendor_id ? cfg->vendor_id : 0x1014;
    t->cfg.device_id = cfg->device_id ? cfg->device_id : 0x0001;
    t->cfg.revision_id = cfg->revision_id ? cfg->revision_id : 1;
    t->buffer_size =
        cfg->buffer_size && cfg->buffer_size <= TIS_BUFFER_MAX ? cfg->buffer_size : TIS_BUFFER_MAX;
    t->cfg.buffer_size = t->buffer_size;
    t->ops = *ops;
    t->opaque = opaque;
    reset_locked(t);
    return t;
}

void tis_free(struct tis *t)
{
    if (!t)
        return;
    if (t->destroy)
        t->destroy(t->destroy_opaque);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* The error object for users of the public API, who see it opaque. */
struct nv_error *tis_error_new(void)
{
    return calloc(1, sizeof(struct nv_error));
}

void tis_error_free(struct nv_error *err)
{
    free(err);
}

int tis_error_code(const struct nv_error *err)
{
    return err ? err->code : 0;
}

const char *tis_error_message(const struct nv_error *err)
{
    return err && err->code ? err->msg : "";
}
