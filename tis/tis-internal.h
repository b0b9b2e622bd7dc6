/* tis-internal.h - the TIS device's state and register layout, shared by the
 * register model (tis.c), its migration blob (tis-save.c) and the libtpms
 * binding (tis-libtpms.c). Not part of the public API. */
#ifndef NVTPM_TIS_INTERNAL_H
#define NVTPM_TIS_INTERNAL_H

#include <pthread.h>

#include "tis.h"
#include "util.h"

/* Registers, by offset inside a locality's page. */
enum {
    TIS_REG_ACCESS = 0x00,
    TIS_REG_INT_ENABLE = 0x08,
    TIS_REG_INT_VECTOR = 0x0c,
    TIS_REG_INT_STATUS = 0x10,
    TIS_REG_INTF_CAPABILITY = 0x14,
    TIS_REG_STS = 0x18,
    TIS_REG_HASH_END = 0x20, /* locality 4 */
    TIS_REG_DATA_FIFO = 0x24,
    TIS_REG_HASH_DATA = 0x24,  /* locality 4, between HASH_START and HASH_END */
    TIS_REG_HASH_START = 0x28, /* locality 4 */
    TIS_REG_INTERFACE_ID = 0x30,
    TIS_REG_XDATA_FIFO = 0x80,
    TIS_REG_XDATA_END = 0xc0,
    TIS_REG_DID_VID = 0xf00,
    TIS_REG_RID = 0xf04,
};

/* ACCESS */
#define TIS_ACC_ESTABLISHMENT   0x01u /* reads 1 when the flag is NOT set */
#define TIS_ACC_REQUEST_USE     0x02u
#define TIS_ACC_PENDING_REQUEST 0x04u
#define TIS_ACC_SEIZE           0x08u
#define TIS_ACC_BEEN_SEIZED     0x10u
#define TIS_ACC_ACTIVE          0x20u
#define TIS_ACC_REG_VALID       0x80u

/* STS */
#define TIS_STS_RESPONSE_RETRY      (1u << 1)
#define TIS_STS_SELFTEST_DONE       (1u << 2)
#define TIS_STS_EXPECT              (1u << 3)
#define TIS_STS_DATA_AVAIL          (1u << 4)
#define TIS_STS_GO                  (1u << 5)
#define TIS_STS_COMMAND_READY       (1u << 6)
#define TIS_STS_VALID               (1u << 7)
#define TIS_STS_COMMAND_CANCEL      (1u << 24)
#define TIS_STS_RESET_ESTABLISHMENT (1u << 25)
#define TIS_STS_FAMILY_2_0          (1u << 26)

/* INT_ENABLE / INT_STATUS */
#define TIS_INT_DATA_AVAIL         (1u << 0)
#define TIS_INT_STS_VALID          (1u << 1)
#define TIS_INT_LOCALITY_CHANGED   (1u << 2)
#define TIS_INT_POLARITY_LOW_LEVEL (1u << 3)
#define TIS_INT_POLARITY_MASK      (3u << 3)
#define TIS_INT_COMMAND_READY      (1u << 7)
#define TIS_INT_ENABLED            (1u << 31)
#define TIS_INT_SOURCES                                                                            \
    (TIS_INT_DATA_AVAIL | TIS_INT_STS_VALID | TIS_INT_LOCALITY_CHANGED | TIS_INT_COMMAND_READY)
#define TIS_INT_ENABLE_BITS (TIS_INT_ENABLED | TIS_INT_POLARITY_MASK | TIS_INT_SOURCES)

/* Identification, as QEMU's tpm-tis (../shared/reference/tis.md). */
#define TIS_CAPABILITY_2_0   0x30000697u
#define TIS_CAPABILITY_1_2   0x20000697u
#define TIS_INTERFACE_ID_2_0 0x00002100u

#define TIS_NO_LOCALITY 0xffu

enum tis_state { TIS_IDLE, TIS_READY, TIS_RECEPTION, TIS_EXECUTION, TIS_COMPLETION };

struct tis_locality {
    uint8_t access; /* requestUse, seize, beenSeized, activeLocality, tpmRegValidSts */
    uint8_t state;  /* enum tis_state */
    uint32_t sts;   /* STS without burstCount and the family bits */
    uint32_t inte, ints;
};

struct tis {
    pthread_mutex_t lock; /* recursive: execute may answer at once */
    struct tis_config cfg;
    struct tis_ops ops;
    void *opaque;
    struct tis_locality loc[TIS_LOCALITIES];
    uint8_t active;         /* the active locality, or TIS_NO_LOCALITY */
    uint8_t aborting, next; /* a pending abort: of which locality, and who is next */
    bool abort_pending;     /* done at once, or when the running command ends */
    bool executing;         /* ops->execute was called, tis_command_done not yet */
    bool go_pending;        /* tpmGo while a dropped command still ran */
    bool drop_response;     /* reset while executing: the answer goes nowhere */
    bool hashing;           /* between HASH_START and HASH_END */
    bool irq_level;
    uint8_t exec_locality;
    uint32_t ordinal; /* of the running command (selfTestDone) */
    uint32_t buffer_size;
    uint32_t rw_offset; /* next byte of the buffer to write or read */
    uint32_t rsp_len;   /* the response's length, in COMPLETION */
    uint8_t buffer[TIS_BUFFER_MAX];
    uint8_t cmd[TIS_BUFFER_MAX];   /* the command as ops->execute sees it */
    void (*destroy)(void *opaque); /* tis_new_libtpms's clean-up */
    void *destroy_opaque;
};

/* Tell ops->set_irq when the line's level changes (lock held). */
void tis_update_irq(struct tis *t);

#endif
