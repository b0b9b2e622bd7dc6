/* server.c - the swtpm-compatible socket server.
 *
 * The data channel's read -> execute -> write loop runs on a TPM thread of
 * its own, so a command costs no thread hand-off; the main thread polls the
 * control channel, the listening sockets, the MS simulator's platform port
 * and the signals, so that cancel, locality and status answer while a slow
 * command runs. One data client and one control client at a time. */
#include "server-internal.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ctrl.h"
#include "fdstash.h"

#define MS_SEND_COMMAND  8u
#define MS_SESSION_END   20u
#define CTRL_DEADLINE_MS 10000 /* a control request, and its response, each */
#define IDLE_RELEASE_MS  100   /* quiet after a load or commit: memory given back */

struct server {
    const struct tpm_server_config *cfg;
    uint8_t locality;
    int wake[2];    /* the TPM thread tells the main loop its client left */
    int unblock[2]; /* the main loop tells the TPM thread to leave a client that is no
                     * socket (a pty: shutdown() cannot end its read) */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int data_fd;    /* the data client the TPM thread serves, -1: none */
    int pending_fd; /* the next one (SET_DATAFD while one is served) */
    bool stopping;
};

/* recv and send, or read and write where fd is no socket (a pty given with
 * swtpm's --fd); send keeps MSG_NOSIGNAL for sockets. */
static ssize_t io_recv(int fd, void *buf, size_t len)
{
    ssize_t n = recv(fd, buf, len, 0);
    return n < 0 && errno == ENOTSOCK ? read(fd, buf, len) : n;
}

static ssize_t io_send(int fd, const void *buf, size_t len)
{
    ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
    return n < 0 && errno == ENOTSOCK ? write(fd, buf, len) : n;
}

int server_write_full(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = io_send(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void log_bytes(const struct server *s, const char *what, const uint8_t *p, uint32_t len)
{
    if (s->cfg->log_level < 5 || s->cfg->log_fd < 0)
        return;
    char hex[64 * 3 + 8];
    int n = 0;
    for (uint32_t i = 0; i < len && i < 64; i++)
        n += snprintf(hex + n, sizeof(hex) - (size_t)n, " %02x", p[i]);
    snprintf(hex + n, sizeof(hex) - (size_t)n, "%s", len > 64 ? " ..." : "");
    nv_log(s->cfg->log_fd, s->cfg->log_prefix, "nvtpm: %s (%u bytes):%s", what, len, hex);
}

/* Why a control request failed: one line on the log. */
static void cb_log(void *opaque, const char *message)
{
    const struct server *s = opaque;
    nv_log(s->cfg->log_fd, s->cfg->log_prefix, "nvtpm: %s", message);
}

/* ---- the data channel, on the TPM thread ------------------------------------------ */

/* A TPM error response of 10 bytes (TPM 2: RC; TPM 1.2: return code). */
static void error_response(uint8_t *r, uint32_t code)
{
    bool tpm2 = tpm_backend_version() == 2;
    r[0] = tpm2 ? 0x80 : 0x00;
    r[1] = tpm2 ? 0x01 : 0xc4;
    nv_put_be32(r + 2, 10);
    nv_put_be32(r + 6, code);
}

static uint32_t command_size_error(void)
{
    return tpm_backend_version() == 2 ? 0x142u /* TPM_RC_COMMAND_SIZE */
                                      : 0x19u /* BAD_PARAM_SIZE */;
}

static uint32_t failure_code(void)
{
    return tpm_backend_version() == 2 ? 0x101u /* TPM_RC_FAILURE */ : 0x09u /* TPM_FAIL */;
}

/* What a data client sent and the TPM thread has not used yet: one recv
 * usually brings a whole command, where reading header and body apart would
 * cost three system calls per command. */
struct reader {
    int fd;
    int stop_fd; /* for a data channel that is no socket: readable = leave it */
    size_t have, pos;
    uint8_t buf[8192];
};

/* malloc'd, not calloc'd: a reused chunk would be zeroed whole, and its
 * pages stay resident though a command touches only its first bytes. */
static struct reader *reader_new(int fd, int stop_fd)
{
    struct reader *r = malloc(sizeof(*r));
    if (r) {
        r->fd = fd;
        r->stop_fd = stop_fd;
        r->have = r->pos = 0;
    }
    return r;
}

/* Wait until fd or the stop pipe is readable; -1 once asked to stop. */
static int wait_for_data(const struct reader *r)
{
    struct pollfd p[2] = {{.fd = r->fd, .events = POLLIN}, {.fd = r->stop_fd, .events = POLLIN}};
    int n;
    do {
        n = poll(p, 2, -1);
    } while (n < 0 && errno == EINTR);
    return n < 0 || p[1].revents ? -1 : 0;
}

static int reader_get(struct reader *r, void *dst, size_t len)
{
    uint8_t *p = dst;
    while (len) {
        if (r->pos == r->have) {
            ssize_t n;
            if (r->stop_fd >= 0 && wait_for_data(r) < 0)
                return -1;
            do {
                n = io_recv(r->fd, r->buf, sizeof(r->buf));
            } while (n < 0 && errno == EINTR);
            if (n <= 0)
                return -1;
            r->have = (size_t)n;
            r->pos = 0;
        }
        size_t take = r->have - r->pos < len ? r->have - r->pos : len;
        memcpy(p, r->buf + r->pos, take);
        r->pos += take;
        p += take;
        len -= take;
    }
    return 0;
}

/* The response, with the prefixed framing's length and trailer: one send. */
static int send_response(int fd, const uint8_t *resp, uint32_t len, bool prefixed)
{
    uint8_t len_word[4], ack[4] = {0};
    nv_put_be32(len_word, len);
    struct iovec iov[3] = {{len_word, 4}, {(void *)resp, len}, {ack, 4}};
    struct msghdr msg = {.msg_iov = prefixed ? iov : iov + 1, .msg_iovlen = prefixed ? 3 : 1};
    size_t total = len + (prefixed ? 8 : 0);
    ssize_t n;
    do {
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK)
            n = writev(fd, msg.msg_iov, (int)msg.msg_iovlen);
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)total)
        return 0;
    if (n < 0)
        return -1;
    /* A short send (a full socket buffer): the rest the slow way. */
    uint8_t *flat = malloc(total);
    if (!flat)
        return -1;
    if (prefixed) {
        memcpy(flat, len_word, 4);
        memcpy(flat + 4 + len, ack, 4);
    }
    memcpy(flat + (prefixed ? 4 : 0), resp, len);
    int r = server_write_full(fd, flat + n, total - (size_t)n);
    free(flat);
    return r;
}

/* Before waiting for the next command: once the connection has been quiet
 * for IDLE_RELEASE_MS after a load or commit, what the NVRAM holds is given
 * back (tpm_backend_release_memory). Only after one, so that a stream of
 * commands that store nothing costs no extra system call; a stream of
 * commits costs one poll each, not a release and the page faults after it. */
static void release_when_idle(const struct reader *rd)
{
    if (rd->pos < rd->have || !tpm_backend_holds_memory())
        return;
    struct pollfd p[2] = {{.fd = rd->fd, .events = POLLIN}, {.fd = rd->stop_fd, .events = POLLIN}};
    int n;
    do {
        n = poll(p, rd->stop_fd >= 0 ? 2 : 1, IDLE_RELEASE_MS);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
        tpm_backend_release_memory();
}

/* Serve one command; false when the connection should close. */
static bool serve_command(struct server *s, struct reader *rd, uint8_t *buf, uint32_t cap)
{
    uint8_t head[6], err_resp[10], locality = s->locality;
    bool prefixed = false;
    release_when_idle(rd);
    if (reader_get(rd, head, 4) < 0)
        return false;
    uint32_t first = nv_be32(head);
    if (first == MS_SESSION_END)
        return false;
    if (first == MS_SEND_COMMAND) {
        uint8_t pre[5];
        if (tpm_backend_version() != 2 || reader_get(rd, pre, 5) < 0 || reader_get(rd, head, 4) < 0)
            return false;
        prefixed = true;
        locality = pre[0];
    }
    if (reader_get(rd, head + 4, 2) < 0)
        return false;
    uint32_t size = nv_be32(head + 2);
    const uint8_t *resp = err_resp;
    uint32_t resp_len = 10;
    bool keep = true;
    if (size < 10 || size > cap) {
        error_response(err_resp, command_size_error()); /* then close: the rest is unread */
        keep = false;
    } else {
        memcpy(buf, head, 6);
        if (reader_get(rd, buf + 6, size - 6) < 0)
            return false;
        log_bytes(s, "command", buf, size);
        if (tpm_backend_execute(buf, size, locality, &resp, &resp_len) != 0) {
            error_response(err_resp, failure_code());
            resp = err_resp;
            resp_len = 10;
        }
        log_bytes(s, "response", resp, resp_len);
    }
    if (send_response(rd->fd, resp, resp_len, prefixed) < 0)
        return false;
    return keep && !s->cfg->data.disconnect;
}

void tpm_server_serve_data(int fd)
{
    static const struct tpm_server_config cfg = {.log_fd = -1};
    struct server s = {.cfg = &cfg, .data_fd = fd, .pending_fd = -1};
    uint32_t cap = tpm_backend_buffer_size();
    uint8_t *buf = malloc(cap);
    struct reader *rd = reader_new(fd, -1);
    while (buf && rd && serve_command(&s, rd, buf, cap))
        ;
    free(rd);
    free(buf);
}

static void *tpm_thread(void *opaque)
{
    struct server *s = opaque;
    uint32_t cap = 0;
    uint8_t *buf = NULL;
    for (;;) {
        pthread_mutex_lock(&s->lock);
        while (s->data_fd < 0 && !s->stopping) {
            if (s->pending_fd >= 0) {
                s->data_fd = s->pending_fd;
                s->pending_fd = -1;
                break;
            }
            pthread_cond_wait(&s->cond, &s->lock);
        }
        int fd = s->data_fd;
        bool stop = s->stopping;
        char drain[16]; /* a request to leave the last client; one for this one comes later */
        while (read(s->unblock[0], drain, sizeof(drain)) > 0)
            ;
        pthread_mutex_unlock(&s->lock);
        if (stop)
            break;
        if (tpm_backend_buffer_size() != cap) {
            cap = tpm_backend_buffer_size();
            free(buf);
            buf = malloc(cap);
        }
        int type;
        socklen_t tl = sizeof(type);
        struct reader *rd = reader_new(
            fd, getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 ? -1 : s->unblock[0]);
        while (buf && rd && serve_command(s, rd, buf, cap))
            ;
        free(rd);
        tpm_backend_release_memory(); /* no client: idle */
        pthread_mutex_lock(&s->lock);
        close(fd);
        s->data_fd = -1;
        pthread_mutex_unlock(&s->lock);
        if (write(s->wake[1], "x", 1) < 0)
            perror("nvtpm: wake");
    }
    free(buf);
    return NULL;
}

/* Make the TPM thread leave the data client it serves (the lock held). */
static void interrupt_data(struct server *s)
{
    if (s->data_fd < 0)
        return;
    shutdown(s->data_fd, SHUT_RDWR);
    if (write(s->unblock[1], "x", 1) < 0 && errno != EAGAIN)
        perror("nvtpm: unblock");
}

/* Hand a connected data socket to the TPM thread; one being served is left
 * so that the thread moves on to this one. */
static void give_data_fd(struct server *s, int fd)
{
    pthread_mutex_lock(&s->lock);
    if (s->pending_fd >= 0)
        close(s->pending_fd);
    s->pending_fd = fd;
    interrupt_data(s);
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

static bool data_busy(struct server *s)
{
    pthread_mutex_lock(&s->lock);
    bool busy = s->data_fd >= 0 || s->pending_fd >= 0;
    pthread_mutex_unlock(&s->lock);
    return busy;
}

/* ---- control-channel callbacks ----------------------------------------------------- */

static uint32_t cb_set_datafd(void *opaque, int fd)
{
    struct nv_error err = {0};
    if (fdstash_check_fd(fd, FDSTASH_CONNECTED_SOCKET, &err) < 0) {
        close(fd);
        return TPM_CTRL_FAIL;
    }
    give_data_fd(opaque, fd);
    return TPM_CTRL_SUCCESS;
}

/* A claim or release of the image, under the backend's lock: a claim
 * re-reads everything cached of the image (nvram_storage_claim), which no
 * commit of the TPM thread may use meanwhile. */
struct handover {
    struct nvram_storage *storage;
    bool claim;
    uint32_t retries;
    struct nv_error err;
};

static int handover_locked(void *arg)
{
    struct handover *h = arg;
    return h->claim ? nvram_storage_claim(h->storage, h->retries, &h->err)
                    : nvram_storage_release(h->storage, &h->err);
}

static uint32_t cb_lock_storage(void *opaque, uint32_t retries)
{
    struct server *s = opaque;
    struct handover h = {.storage = s->cfg->storage, .claim = true, .retries = retries};
    if (!h.storage || tpm_backend_exclusive(handover_locked, &h) == 0)
        return TPM_CTRL_SUCCESS;
    if (h.err.code != -EBUSY)
        cb_log(s, h.err.msg);
    return TPM_CTRL_FAIL;
}

/* Whether stopping may write the state (the automatic TPM2_Shutdown commits
 * permall): not once the image was handed to a migration's destination
 * (release-lock-outgoing; LOCK_STORAGE takes it back), whose newer state an
 * old copy must not overwrite. */
static bool stores_at_stop(const struct tpm_server_config *cfg)
{
    if (!cfg->storage || nvram_storage_owned(cfg->storage) || !tpm_backend_running())
        return true;
    fprintf(stderr,
            "nvtpm: %s was handed over to a migration's destination; the TPM stops "
            "without writing its state\n",
            nvram_storage_name(cfg->storage));
    return false;
}

static bool cb_store_at_stop(void *opaque)
{
    struct server *s = opaque;
    return stores_at_stop(s->cfg);
}

static void cb_savestate_read(void *opaque)
{
    struct server *s = opaque;
    struct handover h = {.storage = s->cfg->storage};
    if (s->cfg->release_lock_outgoing && h.storage &&
        tpm_backend_exclusive(handover_locked, &h) < 0)
        fprintf(stderr, "nvtpm: releasing the image after migration: %s\n", h.err.msg);
}

/* ---- the control channel, on the main thread ----------------------------------------- */

/* The control connection. Its request is taken in whatever pieces the socket
 * has whenever poll says it is readable, and its response leaves the same
 * way, so the main loop never waits on a control client: a client that
 * trickles a request or reads no response holds neither the data channel nor
 * a signal. Each request, and then its response, must be through within
 * CTRL_DEADLINE_MS of its first byte (not per piece), or the connection is
 * dropped: one control client at a time, so a stalled one would keep every
 * other out for good. */
struct ctrl_conn {
    int fd;       /* -1: none */
    uint8_t *req; /* CTRL_MAX_REQUEST bytes */
    size_t have;
    int passed_fd;    /* the descriptor that came with the request (SET_DATAFD), -1: none */
    int64_t deadline; /* CLOCK_MONOTONIC ms; 0: no request under way */
    uint8_t small[CTRL_MAX_RESPONSE];
    uint8_t *big; /* a large response (ctrl_handle's) */
    const uint8_t *out;
    size_t out_len;   /* response bytes not sent yet */
    bool close_after; /* a refused request: answer, then close */
    bool exit_after;  /* SHUTDOWN: answer, then stop the process */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Forget the request and response under way (the socket is the caller's).
 * The request's pages go back too: control requests come a few per VM boot
 * or migration, and the buffer is sized for the largest state blob. */
static void conn_clear(struct ctrl_conn *c)
{
    if (c->have)
        nv_pages_release(c->req, c->have);
    if (c->passed_fd >= 0)
        close(c->passed_fd);
    free(c->big);
    c->passed_fd = -1;
    c->big = NULL;
    c->have = 0;
    c->out_len = 0;
    c->deadline = 0;
    c->close_after = false;
    c->exit_after = false;
}

/* Take what the socket has; false when the connection ends (EOF, an error). */
static bool conn_read(struct ctrl_conn *c)
{
    ssize_t n;
    if (c->have == 0) { /* a new request: the descriptor SET_DATAFD brings comes first */
        size_t nfds = 0;
        c->passed_fd = -1;
        n = fdstash_recvmsg(c->fd, c->req, CTRL_MAX_REQUEST, &c->passed_fd, 1, &nfds, NULL);
        if (nfds == 0)
            c->passed_fd = -1;
        c->deadline = now_ms() + CTRL_DEADLINE_MS;
    } else {
        do {
            n = recv(c->fd, c->req + c->have, CTRL_MAX_REQUEST - c->have, MSG_DONTWAIT);
        } while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
    }
    if (n <= 0)
        return false;
    c->have += (size_t)n;
    return true;
}

/* A request that can never be valid (a length beyond the limits):
 * BAD_PARAMETER, then the connection closes, since the rest is unread. */
static void conn_refuse(struct ctrl_conn *c)
{
    if (c->passed_fd >= 0)
        close(c->passed_fd);
    c->passed_fd = -1;
    nv_put_be32(c->small, TPM_CTRL_BAD_PARAMETER);
    c->out = c->small;
    c->out_len = 4;
    c->close_after = true;
}

/* The control channel drives the backend. */
static const struct ctrl_tpm_ops backend_ops = {
    .running = tpm_backend_running,
    .version = tpm_backend_version,
    .start = tpm_backend_start,
    .stop = tpm_backend_stop,
    .cancel = tpm_backend_cancel,
    .get_established = tpm_backend_get_established,
    .reset_established = tpm_backend_reset_established,
    .hash_start = tpm_backend_hash_start,
    .hash_data = tpm_backend_hash_data,
    .hash_end = tpm_backend_hash_end,
    .store_volatile = tpm_backend_store_volatile,
    .get_state = tpm_backend_get_state,
    .set_state = tpm_backend_set_state,
    .set_buffer_size = tpm_backend_set_buffer_size,
    .info = tpm_backend_info,
};

static void conn_handle(struct server *s, struct ctrl_conn *c)
{
    struct ctrl_env env = {.tpm = &backend_ops,
                           .opaque = s,
                           .locality = &s->locality,
                           .reject_locality_4 = s->cfg->reject_locality_4,
                           .file_key = s->cfg->file_key,
                           .migration = s->cfg->migration,
                           .store_at_stop = cb_store_at_stop,
                           .migration_key = s->cfg->migration_key,
                           .state_key = s->cfg->state_key,
                           .set_datafd = cb_set_datafd,
                           .lock_storage = cb_lock_storage,
                           .savestate_read = cb_savestate_read,
                           .log = cb_log};
    size_t len = 0;
    log_bytes(s, "control request", c->req, (uint32_t)c->have);
    enum ctrl_action a = ctrl_handle(&env, c->req, c->have, c->passed_fd, c->small, &len, &c->big);
    c->passed_fd = -1; /* the handler took it */
    c->out = c->big ? c->big : c->small;
    c->out_len = len;
    c->exit_after = a == CTRL_EXIT;
    uint32_t cmd = nv_be32(c->req);
    nv_pages_release(c->req, c->have); /* (as conn_clear says) */
    if (cmd != CTRL_SET_LOCALITY && cmd != CTRL_CANCEL_TPM_CMD && cmd != CTRL_GET_CAPABILITY) {
        /* (not for the frequent light ones) what INIT's load or a state
         * blob's commit used, and the stack libtpms ran on here */
        tpm_backend_release_memory();
        nv_stack_release_below();
    }
    c->have = 0;
    /* the response's own time: handling (LOCK_STORAGE's retries) is not the client's */
    c->deadline = now_ms() + CTRL_DEADLINE_MS;
    log_bytes(s, "control response", c->out, (uint32_t)len);
}

/* Send what the socket takes of the response; false when the connection
 * ends (an error, a refused request, SHUTDOWN). */
static bool conn_send(struct ctrl_conn *c)
{
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return true;
        if (n <= 0)
            return false;
        c->out += n;
        c->out_len -= (size_t)n;
    }
    free(c->big);
    c->big = NULL;
    c->deadline = 0;
    return !c->close_after && !c->exit_after;
}

/* The control socket is ready (readable, or writable while a response is
 * under way); false when the connection ends. */
static bool conn_serve(struct server *s, struct ctrl_conn *c)
{
    if (c->out_len == 0) {
        if (!conn_read(c))
            return false;
        if (c->have < 4)
            return true;
        long missing = ctrl_request_missing(c->req, c->have);
        if (missing > 0)
            return true;
        if (missing < 0)
            conn_refuse(c);
        else
            conn_handle(s, c);
    }
    return conn_send(c);
}

/* Whether the request or response under way is past its deadline: the
 * connection is then dropped without an answer, as swtpm drops a request it
 * did not receive whole in time (it allows 500 ms), with one line on the log. */
static bool conn_expired(struct server *s, const struct ctrl_conn *c, int64_t now)
{
    if (c->fd < 0 || c->deadline == 0 || now < c->deadline)
        return false;
    char msg[160];
    if (c->out_len)
        snprintf(msg, sizeof(msg),
                 "control client took no response within %d s (%zu bytes left); "
                 "connection dropped",
                 CTRL_DEADLINE_MS / 1000, c->out_len);
    else
        snprintf(msg, sizeof(msg),
                 "control request not received whole within %d s (%zu bytes, command "
                 "0x%02x); connection dropped",
                 CTRL_DEADLINE_MS / 1000, c->have, c->have >= 4 ? nv_be32(c->req) : 0u);
    cb_log(s, msg);
    return true;
}

/* How long poll may wait for a deadline (0: none): -1 for ever. */
static int deadline_wait(int64_t deadline, int64_t now)
{
    if (deadline == 0)
        return -1;
    return deadline <= now ? 0 : (int)(deadline - now);
}

/* ---- the MS simulator's platform port ------------------------------------------------ */

/* The platform connection: its 4-byte commands are taken as their bytes
 * come, as a control request is, so a client that sends half of one holds up
 * nothing; it is dropped at the control channel's deadline. */
struct plat_conn {
    int fd; /* -1: none */
    uint8_t cmd[4];
    size_t have;
    int64_t deadline; /* CLOCK_MONOTONIC ms; 0: no command under way */
};

/* Run one command; false for the session's end. */
static bool platform_command(uint32_t cmd)
{
    switch (cmd) {
    case 1: /* power on */
        if (!tpm_backend_running())
            tpm_backend_start(false);
        break;
    case 2: /* power off */
        tpm_backend_stop(false);
        break;
    case 9: /* cancel on */
        tpm_backend_cancel();
        break;
    case MS_SESSION_END:
        return false;
    default: /* NV on/off, cancel off, locality, phys. presence: nothing to do */
        break;
    }
    return true;
}

/* The platform socket is readable; false when the connection ends. A reply
 * (4 zero bytes) the socket cannot take at once ends it too: the client has
 * left thousands of replies unread. */
static bool plat_serve(struct plat_conn *p)
{
    static const uint8_t zero[4] = {0};
    ssize_t n;
    do {
        n = recv(p->fd, p->cmd + p->have, sizeof(p->cmd) - p->have, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return true;
    if (n <= 0)
        return false;
    if (p->have == 0)
        p->deadline = now_ms() + CTRL_DEADLINE_MS;
    p->have += (size_t)n;
    if (p->have < sizeof(p->cmd))
        return true;
    p->have = 0;
    p->deadline = 0;
    bool more = platform_command(nv_be32(p->cmd));
    tpm_backend_release_memory(); /* a power-on's load */
    return more && send(p->fd, zero, sizeof(zero), MSG_DONTWAIT | MSG_NOSIGNAL) == sizeof(zero);
}

/* ---- the main loop ----------------------------------------------------------------------- */

enum { P_SIGNAL, P_WAKE, P_CTRL_LISTEN, P_CTRL, P_DATA_LISTEN, P_PLAT_LISTEN, P_PLAT, P_COUNT };

struct loop {
    struct pollfd p[P_COUNT];
    struct ctrl_conn ctrl; /* its fd is p[P_CTRL]'s */
    struct plat_conn plat; /* its fd is p[P_PLAT]'s */
    bool done;
};

static void set_fd(struct loop *l, int i, int fd)
{
    l->p[i].fd = fd;
    l->p[i].events = POLLIN;
}

/* Take fd (or -1) as the control connection. */
static void loop_set_ctrl(struct loop *l, int fd)
{
    conn_clear(&l->ctrl);
    l->ctrl.fd = fd;
    set_fd(l, P_CTRL, fd);
}

/* Close the control connection; SHUTDOWN and --ctrl ...,terminate then stop
 * the process. */
static void loop_end_ctrl(struct loop *l, const struct tpm_server_config *cfg)
{
    bool exit_now = l->ctrl.exit_after;
    close(l->ctrl.fd);
    loop_set_ctrl(l, -1);
    if (exit_now || cfg->ctrl.terminate)
        l->done = true;
}

static void loop_set_plat(struct loop *l, int fd)
{
    l->plat = (struct plat_conn){.fd = fd};
    set_fd(l, P_PLAT, fd);
}

/* Drop a control or platform client whose request is past its deadline. */
static void loop_expire(struct server *s, struct loop *l)
{
    int64_t now = now_ms();
    if (conn_expired(s, &l->ctrl, now))
        loop_end_ctrl(l, s->cfg);
    if (l->plat.fd >= 0 && l->plat.deadline && now >= l->plat.deadline) {
        char msg[96];
        snprintf(msg, sizeof(msg),
                 "platform command not received whole within %d s; connection dropped",
                 CTRL_DEADLINE_MS / 1000);
        cb_log(s, msg);
        close(l->plat.fd);
        loop_set_plat(l, -1);
    }
}

static int accept_one(int listen_fd)
{
    int fd;
    do {
        fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static void handle_events(struct server *s, struct loop *l, int data_listen)
{
    const struct tpm_server_config *cfg = s->cfg;
    if (l->p[P_SIGNAL].revents) {
        struct signalfd_siginfo si;
        if (read(l->p[P_SIGNAL].fd, &si, sizeof(si)) > 0)
            l->done = true;
    }
    if (l->p[P_WAKE].revents) {
        char c[16];
        if (read(s->wake[0], c, sizeof(c)) > 0 && cfg->terminate)
            l->done = true; /* --terminate: the data client left */
    }
    if (l->p[P_CTRL_LISTEN].revents && l->ctrl.fd < 0)
        loop_set_ctrl(l, accept_one(l->p[P_CTRL_LISTEN].fd));
    if (l->ctrl.fd >= 0 && (l->p[P_CTRL].revents & (POLLIN | POLLOUT | POLLHUP | POLLERR)) &&
        !conn_serve(s, &l->ctrl))
        loop_end_ctrl(l, cfg);
    if (l->p[P_DATA_LISTEN].revents && !data_busy(s)) {
        int fd = accept_one(data_listen);
        if (fd >= 0)
            give_data_fd(s, fd);
    }
    if (l->p[P_PLAT_LISTEN].revents && l->plat.fd < 0)
        loop_set_plat(l, accept_one(l->p[P_PLAT_LISTEN].fd));
    if (l->plat.fd >= 0 && (l->p[P_PLAT].revents & (POLLIN | POLLHUP | POLLERR)) &&
        !plat_serve(&l->plat)) {
        close(l->plat.fd);
        loop_set_plat(l, -1);
    }
}

/* One round of the main loop: wait until a socket or a signal is ready, or
 * a control or platform request's deadline passes, and serve what is. */
static int loop_round(struct server *s, struct loop *l, struct nv_error *err)
{
    int data_listen = l->p[P_DATA_LISTEN].fd;
    l->p[P_DATA_LISTEN].fd = data_busy(s) ? -1 : data_listen; /* one client at a time */
    l->p[P_CTRL_LISTEN].fd =
        l->p[P_CTRL].fd >= 0 ? -l->p[P_CTRL_LISTEN].fd - 2 : l->p[P_CTRL_LISTEN].fd;
    l->p[P_CTRL].events = l->ctrl.out_len ? POLLOUT : POLLIN; /* a response under way */
    int64_t now = now_ms();
    int wait = deadline_wait(l->ctrl.deadline, now),
        plat_wait = deadline_wait(l->plat.deadline, now);
    if (plat_wait >= 0 && (wait < 0 || plat_wait < wait))
        wait = plat_wait;
    int n = poll(l->p, P_COUNT, wait);
    l->p[P_DATA_LISTEN].fd = data_listen;
    if (l->p[P_CTRL_LISTEN].fd < -1)
        l->p[P_CTRL_LISTEN].fd = -l->p[P_CTRL_LISTEN].fd - 2;
    if (n < 0 && errno != EINTR)
        return nv_error_set(err, -errno, "server: poll: %s", strerror(errno));
    if (n > 0)
        handle_events(s, l, data_listen);
    loop_expire(s, l);
    return 0;
}

static int signal_fd(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    /* Blocked before the TPM thread starts, so only the signalfd sees them. */
    pthread_sigmask(SIG_BLOCK, &set, old);
    signal(SIGPIPE, SIG_IGN);
    return signalfd(-1, &set, SFD_CLOEXEC);
}

static int open_platform(unsigned port, struct nv_error *err)
{
    struct tpm_channel_config c = {.type = TPM_CHANNEL_TCP, .port = port};
    bool connected;
    return server_open_channel(&c, "platform port", false, &connected, err);
}

/* Open every socket; returns the data listening socket (or -1). */
static int open_sockets(struct server *s, struct loop *l, struct nv_error *err)
{
    const struct tpm_server_config *cfg = s->cfg;
    bool connected;
    for (int i = 0; i < P_COUNT; i++)
        set_fd(l, i, -1);
    int fd = server_open_channel(&cfg->ctrl, "control channel", false, &connected, err);
    if (cfg->ctrl.type != TPM_CHANNEL_NONE && fd < 0)
        return fd;
    if (connected)
        loop_set_ctrl(l, fd);
    else
        set_fd(l, P_CTRL_LISTEN, fd);
    fd = server_open_channel(&cfg->data, "data channel", true, &connected, err);
    if (cfg->data.type != TPM_CHANNEL_NONE && fd < 0)
        return fd;
    if (connected)
        give_data_fd(s, fd);
    else
        set_fd(l, P_DATA_LISTEN, fd);
    if (cfg->platform_port) {
        int p = open_platform(cfg->platform_port, err);
        if (p < 0)
            return p;
        set_fd(l, P_PLAT_LISTEN, p);
    }
    return 0;
}

static void close_sockets(struct loop *l, const struct tpm_server_config *cfg)
{
    for (int i = P_CTRL_LISTEN; i < P_COUNT; i++)
        if (l->p[i].fd >= 0)
            close(l->p[i].fd);
    if (cfg->ctrl.type == TPM_CHANNEL_UNIX)
        unlink(cfg->ctrl.path);
    if (cfg->data.type == TPM_CHANNEL_UNIX)
        unlink(cfg->data.path);
}

int tpm_server_run(const struct tpm_server_config *cfg, struct nv_error *err)
{
    struct server s = {.cfg = cfg, .data_fd = -1, .pending_fd = -1};
    struct loop l = {0};
    pthread_t thread;
    sigset_t old;
    uint8_t *req = nv_pages_alloc(CTRL_MAX_REQUEST);
    if (!req || pipe2(s.wake, O_CLOEXEC) < 0) {
        nv_pages_free(req, CTRL_MAX_REQUEST);
        return nv_error_set(err, -errno ? -errno : -ENOMEM, "server: %s", strerror(errno));
    }
    if (pipe2(s.unblock, O_CLOEXEC | O_NONBLOCK) < 0) {
        int e = -errno;
        close(s.wake[0]);
        close(s.wake[1]);
        nv_pages_free(req, CTRL_MAX_REQUEST);
        return nv_error_set(err, e, "server: %s", strerror(-e));
    }
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    l.ctrl.fd = l.ctrl.passed_fd = l.plat.fd = -1;
    l.ctrl.req = req;
    int r = open_sockets(&s, &l, err);
    if (r == 0 && cfg->ready)
        r = cfg->ready(cfg->ready_opaque, err);
    tpm_backend_release_memory(); /* the start's loads and commits are done */
    nv_stack_release_below();     /* and its deep frames (libtpms) */
    set_fd(&l, P_SIGNAL, signal_fd(&old));
    set_fd(&l, P_WAKE, s.wake[0]);
    /* One malloc arena for both threads: the TPM thread would otherwise get
     * an arena of its own (16 KiB resident in every TPM process), and the two
     * threads take turns rather than allocate at once. */
#ifdef M_ARENA_MAX /* (glibc's) */
    mallopt(M_ARENA_MAX, 1);
#endif
    if (r == 0 && pthread_create(&thread, NULL, tpm_thread, &s) != 0)
        r = nv_error_set_status(err, NV_STATUS_IO, -EAGAIN, /* no room for a thread: not busy */
                                "server: cannot start the TPM thread");
    while (r == 0 && !l.done)
        r = loop_round(&s, &l, err);
    if (r == 0 || l.done) {
        pthread_mutex_lock(&s.lock);
        s.stopping = true;
        interrupt_data(&s);
        pthread_cond_signal(&s.cond);
        pthread_mutex_unlock(&s.lock);
        pthread_join(thread, NULL);
    }
    tpm_backend_stop(stores_at_stop(cfg)); /* orderly: the automatic TPM2_Shutdown */
    close_sockets(&l, cfg);
    conn_clear(&l.ctrl);
    if (l.p[P_SIGNAL].fd >= 0)
        close(l.p[P_SIGNAL].fd);
    close(s.wake[0]);
    close(s.wake[1]);
    close(s.unblock[0]);
    close(s.unblock[1]);
    if (s.pending_fd >= 0)
        close(s.pending_fd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    nv_pages_free(req, CTRL_MAX_REQUEST);
    return r;
}
