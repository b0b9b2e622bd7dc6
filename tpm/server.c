/* server.c - the swtpm-compatible socket server.
 *
 * The data channel's read -> execute -> write loop runs on a TPM thread of
 * its own, so a command costs no thread hand-off; the main thread polls the
 * control channel, the listening sockets, the MS simulator's platform port
 * and the signals, so that cancel, locality and status answer while a slow
 * command runs. One data client and one control client at a time. */
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ctrl.h"
#include "fdstash.h"

#define MS_SEND_COMMAND      8u
#define MS_SESSION_END       20u
#define CTRL_READ_TIMEOUT_MS 10000

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

int server_read_full(int fd, void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = io_recv(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
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

/* Serve one command; false when the connection should close. */
static bool serve_command(struct server *s, struct reader *rd, uint8_t *buf, uint32_t cap)
{
    uint8_t head[6], err_resp[10], locality = s->locality;
    bool prefixed = false;
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
    struct reader *rd = calloc(1, sizeof(*rd));
    if (rd) {
        rd->fd = fd;
        rd->stop_fd = -1;
    }
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
        struct reader *rd = calloc(1, sizeof(*rd));
        if (rd) {
            int type;
            socklen_t tl = sizeof(type);
            rd->fd = fd;
            rd->stop_fd = getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 ? -1 : s->unblock[0];
        }
        while (buf && rd && serve_command(s, rd, buf, cap))
            ;
        free(rd);
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

static int wait_readable(int fd, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r;
    do {
        r = poll(&p, 1, timeout_ms);
    } while (r < 0 && errno == EINTR);
    return r;
}

/* Read one whole request (and the descriptor SET_DATAFD brings). */
static int read_request(int fd, uint8_t *req, size_t *len, int *passed_fd)
{
    size_t nfds = 0;
    *passed_fd = -1;
    ssize_t n = fdstash_recvmsg(fd, req, CTRL_MAX_REQUEST, passed_fd, 1, &nfds, NULL);
    if (n <= 0)
        return -1;
    size_t have = (size_t)n;
    *len = have;
    while (have < 4 || ctrl_request_missing(req, have) > 0) {
        if (wait_readable(fd, CTRL_READ_TIMEOUT_MS) <= 0)
            goto bad;
        ssize_t m = recv(fd, req + have, CTRL_MAX_REQUEST - have, 0);
        if (m <= 0)
            goto bad;
        have += (size_t)m;
        *len = have;
    }
    if (ctrl_request_missing(req, have) < 0)
        goto bad;
    return 0;
bad:
    if (*passed_fd >= 0)
        close(*passed_fd);
    *passed_fd = -1;
    return -1;
}

/* Serve one request; false when the control connection ends. *exit set on SHUTDOWN. */
static bool serve_ctrl(struct server *s, int fd, uint8_t *req, bool *exit_now)
{
    size_t len = 0, resp_len = 0;
    int passed;
    uint8_t resp[CTRL_MAX_RESPONSE], *big = NULL;
    if (read_request(fd, req, &len, &passed) < 0) {
        if (len >= 4 && ctrl_request_missing(req, len) < 0) {
            nv_put_be32(resp, TPM_CTRL_BAD_PARAMETER);
            server_write_full(fd, resp, 4);
        }
        return false;
    }
    struct ctrl_env env = {.opaque = s,
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
    log_bytes(s, "control request", req, (uint32_t)len);
    enum ctrl_action a = ctrl_handle(&env, req, len, passed, resp, &resp_len, &big);
    log_bytes(s, "control response", big ? big : resp, (uint32_t)resp_len);
    int w = server_write_full(fd, big ? big : resp, resp_len);
    free(big);
    *exit_now = a == CTRL_EXIT;
    return w == 0 && !*exit_now;
}

/* ---- the MS simulator's platform port ------------------------------------------------ */

static bool serve_platform(int fd)
{
    uint8_t cmd[4], zero[4] = {0};
    if (server_read_full(fd, cmd, 4) < 0)
        return false;
    switch (nv_be32(cmd)) {
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
    return server_write_full(fd, zero, 4) == 0;
}

/* ---- the main loop ----------------------------------------------------------------------- */

enum { P_SIGNAL, P_WAKE, P_CTRL_LISTEN, P_CTRL, P_DATA_LISTEN, P_PLAT_LISTEN, P_PLAT, P_COUNT };

struct loop {
    struct pollfd p[P_COUNT];
    bool done;
};

static void set_fd(struct loop *l, int i, int fd)
{
    l->p[i].fd = fd;
    l->p[i].events = POLLIN;
}

static int accept_one(int listen_fd)
{
    int fd;
    do {
        fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

static void handle_events(struct server *s, struct loop *l, uint8_t *req, int data_listen)
{
    const struct tpm_server_config *cfg = s->cfg;
    bool exit_now = false;
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
    if (l->p[P_CTRL_LISTEN].revents && l->p[P_CTRL].fd < 0)
        set_fd(l, P_CTRL, accept_one(l->p[P_CTRL_LISTEN].fd));
    if (l->p[P_CTRL].fd >= 0 && (l->p[P_CTRL].revents & (POLLIN | POLLHUP | POLLERR)) &&
        !serve_ctrl(s, l->p[P_CTRL].fd, req, &exit_now)) {
        close(l->p[P_CTRL].fd);
        set_fd(l, P_CTRL, -1);
        if (exit_now || cfg->ctrl.terminate)
            l->done = true;
    }
    if (l->p[P_DATA_LISTEN].revents && !data_busy(s)) {
        int fd = accept_one(data_listen);
        if (fd >= 0)
            give_data_fd(s, fd);
    }
    if (l->p[P_PLAT_LISTEN].revents && l->p[P_PLAT].fd < 0)
        set_fd(l, P_PLAT, accept_one(l->p[P_PLAT_LISTEN].fd));
    if (l->p[P_PLAT].fd >= 0 && (l->p[P_PLAT].revents & (POLLIN | POLLHUP | POLLERR)) &&
        !serve_platform(l->p[P_PLAT].fd)) {
        close(l->p[P_PLAT].fd);
        set_fd(l, P_PLAT, -1);
    }
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
    set_fd(l, connected ? P_CTRL : P_CTRL_LISTEN, fd);
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
    uint8_t *req = malloc(CTRL_MAX_REQUEST);
    if (!req || pipe2(s.wake, O_CLOEXEC) < 0) {
        free(req);
        return nv_error_set(err, -errno ? -errno : -ENOMEM, "server: %s", strerror(errno));
    }
    if (pipe2(s.unblock, O_CLOEXEC | O_NONBLOCK) < 0) {
        int e = -errno;
        close(s.wake[0]);
        close(s.wake[1]);
        free(req);
        return nv_error_set(err, e, "server: %s", strerror(-e));
    }
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    int r = open_sockets(&s, &l, err);
    if (r == 0 && cfg->ready)
        r = cfg->ready(cfg->ready_opaque, err);
    set_fd(&l, P_SIGNAL, signal_fd(&old));
    set_fd(&l, P_WAKE, s.wake[0]);
    if (r == 0 && pthread_create(&thread, NULL, tpm_thread, &s) != 0)
        r = nv_error_set(err, -EAGAIN, "server: cannot start the TPM thread");
    while (r == 0 && !l.done) {
        int data_listen = l.p[P_DATA_LISTEN].fd;
        l.p[P_DATA_LISTEN].fd = data_busy(&s) ? -1 : data_listen; /* one client at a time */
        l.p[P_CTRL_LISTEN].fd =
            l.p[P_CTRL].fd >= 0 ? -l.p[P_CTRL_LISTEN].fd - 2 : l.p[P_CTRL_LISTEN].fd;
        int n = poll(l.p, P_COUNT, -1);
        l.p[P_DATA_LISTEN].fd = data_listen;
        if (l.p[P_CTRL_LISTEN].fd < -1)
            l.p[P_CTRL_LISTEN].fd = -l.p[P_CTRL_LISTEN].fd - 2;
        if (n < 0 && errno != EINTR)
            r = nv_error_set(err, -errno, "server: poll: %s", strerror(errno));
        else if (n > 0)
            handle_events(&s, &l, req, data_listen);
    }
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
    if (l.p[P_SIGNAL].fd >= 0)
        close(l.p[P_SIGNAL].fd);
    close(s.wake[0]);
    close(s.wake[1]);
    close(s.unblock[0]);
    close(s.unblock[1]);
    if (s.pending_fd >= 0)
        close(s.pending_fd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    free(req);
    return r;
}
