/* faults.c - fault-injection rules and the write log of the "faults" driver.
 *
 * Spec: faults:RULE[,RULE...]:SPEC, where SPEC is what the file driver takes
 * and a RULE is one of
 *   read=WHEN[:ERRNO]  write=WHEN[:ERRNO]  flush=WHEN[:ERRNO]
 *       fail the request WHEN names with ERRNO (default EIO); EINTR fails
 *       one attempt, which the driver retries
 *   short-read=WHEN  short-write=WHEN
 *       the first transfer of that request moves half the bytes
 *   log=FILE
 *       append every write that reached the file and every flush to FILE
 * WHEN is
 *   N[+]          the Nth request of its kind since the open (counted from 1)
 *   EVENT[/N][+]  the Nth (default first) one after each announcement of the
 *                 named point EVENT (bdrv_event; "qcow2-l2-update")
 * and with "+", that request and every later one. FILE must contain neither
 * ',' nor ':'. See docs/block.md for the log format. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define FAULT_RULES_MAX 32
#define WLOG_MAGIC      "NVTWLOG1"

struct fault_rule {
    enum bdrv_fault_op op;
    int event; /* a bdrv_event, or -1: count from the open */
    uint64_t nth;
    bool and_after;
    int error;
    bool short_transfer;
    bool armed;     /* event rules: announced, so counting requests */
    uint64_t since; /* event rules: requests of op since the announcement */
};

struct bdrv_faults {
    struct fault_rule rules[FAULT_RULES_MAX];
    unsigned nrules;
    uint64_t count[FAULT_OP_COUNT];
    int log_fd;
};

/* On-disk record header of the write log (native byte order). */
struct wlog_header {
    uint32_t kind;
    uint32_t length;
    uint64_t offset;
};

static const struct {
    const char *name;
    int value;
} errno_names[] = {
    {"EIO", EIO},       {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},       {"EROFS", EROFS},
    {"EPERM", EPERM},   {"EACCES", EACCES}, {"EAGAIN", EAGAIN},       {"EINTR", EINTR},
    {"EINVAL", EINVAL}, {"ENOMEM", ENOMEM}, {"EFBIG", EFBIG},         {"EBADF", EBADF},
    {"ENODEV", ENODEV}, {"ENXIO", ENXIO},   {"ETIMEDOUT", ETIMEDOUT},
};

static int errno_by_name(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(errno_names) / sizeof(errno_names[0]); i++)
        if (strlen(errno_names[i].name) == len && memcmp(errno_names[i].name, name, len) == 0)
            return errno_names[i].value;
    return 0;
}

static size_t token_len(const char *p)
{
    return strcspn(p, ",:");
}

static const char *const event_names[BDRV_EV_COUNT] = {
    [BDRV_EV_QCOW2_HEADER_UPDATE] = "qcow2-header-update",
    [BDRV_EV_QCOW2_L1_UPDATE] = "qcow2-l1-update",
    [BDRV_EV_QCOW2_L2_UPDATE] = "qcow2-l2-update",
    [BDRV_EV_QCOW2_REFTABLE_UPDATE] = "qcow2-reftable-update",
    [BDRV_EV_QCOW2_REFBLOCK_UPDATE] = "qcow2-refblock-update",
    [BDRV_EV_NVRAM_SUPER_UPDATE] = "nvram-super-update",
    [BDRV_EV_NVRAM_FORMAT_ZEROS] = "nvram-format-zeros",
    [BDRV_EV_NVRAM_FORMAT_MARKERS] = "nvram-format-markers",
    [BDRV_EV_NVRAM_COMMIT_SLOT] = "nvram-commit-slot",
    [BDRV_EV_NVRAM_COMMIT_UNDO] = "nvram-commit-undo",
};

const char *bdrv_event_name(enum bdrv_event ev)
{
    return (unsigned)ev < BDRV_EV_COUNT ? event_names[ev] : NULL;
}

static int event_by_name(const char *name, size_t len)
{
    for (int i = 0; i < BDRV_EV_COUNT; i++)
        if (strlen(event_names[i]) == len && memcmp(event_names[i], name, len) == 0)
            return i;
    return -1;
}

/* A request number, N >= 1, all of [p, p + len). */
static int parse_number(const char *p, size_t len, uint64_t *n)
{
    char num[24];
    if (len == 0 || len >= sizeof(num))
        return -EINVAL;
    memcpy(num, p, len);
    num[len] = '\0';
    if (nv_parse_u64(num, UINT64_MAX, n) < 0 || *n == 0)
        return -EINVAL;
    return 0;
}

/* WHEN, at [p, p + len) of the rule that starts at rule: N[+] or EVENT[/N][+]. */
static int parse_when(const char *rule, const char *p, size_t len, struct fault_rule *r,
                      struct nv_error *err)
{
    int rule_len = (int)(p + len - rule);
    if (len > 0 && p[len - 1] == '+') {
        r->and_after = true;
        len--;
    }
    r->event = -1;
    r->nth = 1;
    if (len > 0 && p[0] >= '0' && p[0] <= '9') {
        if (parse_number(p, len, &r->nth) < 0)
            return nv_error_set(err, -EINVAL,
                                "faults: rule '%.*s': '%.*s' is not a request number (N or N+)",
                                rule_len, rule, (int)len, p);
        return 0;
    }
    const char *slash = memchr(p, '/', len);
    size_t name_len = slash ? (size_t)(slash - p) : len;
    if (slash && parse_number(slash + 1, len - name_len - 1, &r->nth) < 0)
        return nv_error_set(err, -EINVAL,
                            "faults: rule '%.*s': '%.*s' is not a request number after the event",
                            rule_len, rule, (int)(len - name_len - 1), slash + 1);
    r->event = event_by_name(p, name_len);
    if (r->event < 0) {
        char names[400] = "";
        for (int i = 0; i < BDRV_EV_COUNT; i++)
            snprintf(names + strlen(names), sizeof(names) - strlen(names), "%s%s", i ? ", " : "",
                     event_names[i]);
        return nv_error_set(err, -EINVAL,
                            "faults: rule '%.*s': '%.*s' is neither a request number (N, N+) "
                            "nor an event (EVENT, EVENT/N, EVENT+; events: %s)",
                            rule_len, rule, (int)name_len, p, names);
    }
    return 0;
}

static int open_log(struct bdrv_faults *f, const char *p, size_t len, struct nv_error *err)
{
    char path[PATH_MAX];
    if (len == 0 || len >= sizeof(path))
        return nv_error_set(err, -EINVAL, "faults: log= needs a file name");
    memcpy(path, p, len);
    path[len] = '\0';
    if (f->log_fd >= 0)
        close(f->log_fd);
    f->log_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (f->log_fd < 0)
        return nv_error_set(err, -errno, "faults: cannot create log %s: %s", path, strerror(errno));
    if (write(f->log_fd, WLOG_MAGIC, 8) != 8)
        return nv_error_set(err, -EIO, "faults: cannot write log %s", path);
    return 0;
}

/* Parse one rule at *pp; advance past it (not past the separator). */
static int parse_rule(struct bdrv_faults *f, const char **pp, struct nv_error *err)
{
    static const struct {
        const char *key;
        enum bdrv_fault_op op;
        bool short_transfer;
    } keys[] = {{"read", FAULT_READ, false},
                {"write", FAULT_WRITE, false},
                {"flush", FAULT_FLUSH, false},
                {"short-read", FAULT_READ, true},
                {"short-write", FAULT_WRITE, true}};
    const char *p = *pp;
    size_t key_len = strcspn(p, "=,:");
    if (p[key_len] != '=')
        return nv_error_set(err, -EINVAL, "faults: rule '%.*s' has no '='", (int)key_len, p);
    const char *value = p + key_len + 1;
    size_t value_len = token_len(value);
    if (key_len == 3 && memcmp(p, "log", 3) == 0) {
        *pp = value + value_len;
        return open_log(f, value, value_len, err);
    }
    if (f->nrules == FAULT_RULES_MAX)
        return nv_error_set(err, -E2BIG, "faults: more than %d rules", FAULT_RULES_MAX);
    struct fault_rule *r = &f->rules[f->nrules];
    *r = (struct fault_rule){.error = EIO, .event = -1};
    unsigned k;
    for (k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        if (strlen(keys[k].key) == key_len && memcmp(keys[k].key, p, key_len) == 0)
            break;
    if (k == sizeof(keys) / sizeof(keys[0]))
        return nv_error_set(err, -EINVAL, "faults: unknown rule '%.*s'", (int)key_len, p);
    r->op = keys[k].op;
    r->short_transfer = keys[k].short_transfer;
    int ret = parse_when(p, value, value_len, r, err);
    if (ret < 0)
        return ret;
    p = value + value_len;
    if (!r->short_transfer && *p == ':') {
        int e = errno_by_name(p + 1, token_len(p + 1));
        if (e) {
            r->error = e;
            p += 1 + token_len(p + 1);
        }
    }
    f->nrules++;
    *pp = p;
    return 0;
}

struct bdrv_faults *bdrv_faults_parse(const char *text, const char **rest, struct nv_error *err)
{
    struct bdrv_faults *f = calloc(1, sizeof(*f));
    if (!f) {
        nv_error_set(err, -ENOMEM, "out of memory");
        return NULL;
    }
    f->log_fd = -1;
    const char *p = text;
    for (;;) {
        if (parse_rule(f, &p, err) < 0)
            break;
        if (*p == ',') {
            p++;
            continue;
        }
        if (*p == ':' && p[1]) {
            *rest = p + 1;
            return f;
        }
        nv_error_set(err, -EINVAL, "faults: expected ':' and the image after the rules in '%s'",
                     text);
        break;
    }
    bdrv_faults_free(f);
    return NULL;
}

void bdrv_faults_free(struct bdrv_faults *f)
{
    if (!f)
        return;
    if (f->log_fd >= 0)
        close(f->log_fd);
    free(f);
}

static void log_record(struct bdrv_faults *f, uint32_t kind, uint64_t offset, const void *buf,
                       size_t len);

void bdrv_faults_event(struct bdrv_faults *f, enum bdrv_event ev)
{
    for (unsigned i = 0; i < f->nrules; i++) {
        struct fault_rule *r = &f->rules[i];
        /* A "+" rule counts from the first announcement on: later ones
         * neither delay nor end it. */
        if (r->event == (int)ev && !(r->and_after && r->armed)) {
            r->armed = true;
            r->since = 0;
        }
    }
}

struct bdrv_fault_action bdrv_faults_next(struct bdrv_faults *f, enum bdrv_fault_op op)
{
    struct bdrv_fault_action act = {0, false};
    uint64_t count = ++f->count[op];
    for (unsigned i = 0; i < f->nrules; i++) {
        struct fault_rule *r = &f->rules[i];
        if (r->op != op || (r->event >= 0 && !r->armed))
            continue;
        uint64_t n = r->event >= 0 ? ++r->since : count;
        if (!(n == r->nth || (r->and_after && n > r->nth)))
            continue;
        if (r->short_transfer)
            act.short_once = true;
        else
            act.error = r->error;
    }
    if (act.error || act.short_once)
        log_record(f, BDRV_WLOG_FAULT, (uint64_t)op, NULL, 0);
    return act;
}

static void log_record(struct bdrv_faults *f, uint32_t kind, uint64_t offset, const void *buf,
                       size_t len)
{
    if (f->log_fd < 0)
        return;
    struct wlog_header h = {.kind = kind, .length = (uint32_t)len, .offset = offset};
    struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)buf, len}};
    /* One append per record; a short one leaves a cut record the loader drops. */
    if (writev(f->log_fd, iov, len ? 2 : 1) < 0)
        perror("faults: write log");
}

void bdrv_faults_log_write(struct bdrv_faults *f, uint64_t offset, const void *buf, size_t len)
{
    /* Records hold at most 4 GiB - 1; larger writes are split. */
    const uint8_t *p = buf;
    while (len) {
        size_t chunk = len > UINT32_MAX ? UINT32_MAX : len;
        log_record(f, BDRV_WLOG_WRITE, offset, p, chunk);
        p += chunk;
        offset += chunk;
        len -= chunk;
    }
}

void bdrv_faults_log_flush(struct bdrv_faults *f)
{
    log_record(f, BDRV_WLOG_FLUSH, 0, NULL, 0);
}

/* ---- reading a log -------------------------------------------------------- */

static int read_whole(const char *path, uint8_t **out, size_t *size, struct nv_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    int ret = 0;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) < 0) {
        ret = nv_error_set(err, -errno, "%s: %s", path, strerror(errno));
    } else if (!(buf = malloc((size_t)st.st_size + 1))) {
        ret = nv_error_set(err, -ENOMEM, "%s: out of memory", path);
    } else {
        size_t done = 0;
        while (done < (size_t)st.st_size) {
            ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            done += (size_t)n;
        }
        *size = done;
    }
    close(fd);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

int bdrv_wlog_load(const char *path, struct bdrv_wlog *log, struct nv_error *err)
{
    memset(log, 0, sizeof(*log));
    size_t size = 0;
    int r = read_whole(path, &log->buffer, &size, err);
    if (r < 0)
        return r;
    if (size < 8 || memcmp(log->buffer, WLOG_MAGIC, 8) != 0) {
        bdrv_wlog_free(log);
        return nv_error_set(err, -EINVAL, "%s: not a write log (bad magic)", path);
    }
    size_t cap = 0;
    for (size_t pos = 8; size - pos >= sizeof(struct wlog_header);) {
        struct wlog_header h;
        memcpy(&h, log->buffer + pos, sizeof(h));
        if ((h.kind != BDRV_WLOG_WRITE && h.kind != BDRV_WLOG_FLUSH && h.kind != BDRV_WLOG_FAULT) ||
            (h.kind != BDRV_WLOG_WRITE && h.length)) {
            bdrv_wlog_free(log);
            return nv_error_set(err, -EINVAL, "%s: bad record at offset %zu", path, pos);
        }
        if (size - pos - sizeof(h) < h.length)
            break; /* cut short: the writer died during the append */
        if (log->count == cap) {
            cap = cap ? 2 * cap : 64;
            struct bdrv_wlog_record *grown = realloc(log->records, cap * sizeof(*grown));
            if (!grown) {
                bdrv_wlog_free(log);
                return nv_error_set(err, -ENOMEM, "%s: out of memory", path);
            }
            log->records = grown;
        }
        log->records[log->count++] =
            (struct bdrv_wlog_record){.kind = h.kind,
                                      .offset = h.offset,
                                      .length = h.length,
                                      .data = log->buffer + pos + sizeof(h)};
        pos += sizeof(h) + h.length;
    }
    return 0;
}

void bdrv_wlog_free(struct bdrv_wlog *log)
{
    free(log->records);
    free(log->buffer);
    memset(log, 0, sizeof(*log));
}

int bdrv_wlog_apply(const struct bdrv_wlog_record *rec, int fd, struct nv_error *err)
{
    if (rec->kind != BDRV_WLOG_WRITE)
        return 0;
    size_t done = 0;
    while (done < rec->length) {
        ssize_t n = pwrite(fd, rec->data + done, rec->length - done, (off_t)(rec->offset + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return nv_error_set(err, n < 0 ? -errno : -EIO, "replaying a write at %llu failed",
                                (unsigned long long)rec->offset);
        done += (size_t)n;
    }
    return 0;
}
