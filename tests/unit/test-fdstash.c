/* test-fdstash.c - cmocka tests of fdstash/: the stash, SCM_RIGHTS reception,
 * inherited descriptors and socket activation, with a leak check over all. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fdleak.h"
#include "fdstash.h"

static int make_pipe(int *rd, int *wr)
{
    int p[2];
    assert_int_equal(pipe2(p, O_CLOEXEC), 0);
    *rd = p[0];
    *wr = p[1];
    return 0;
}

static int pipe_end(void)
{
    int rd, wr;
    make_pipe(&rd, &wr);
    close(wr);
    return rd;
}

static bool has_cloexec(int fd)
{
    int flags = fcntl(fd, F_GETFD);
    return flags >= 0 && (flags & FD_CLOEXEC);
}

/* ---- the stash ---------------------------------------------------------- */

static void give_take_peek(void **state)
{
    (void)state;
    struct fdstash s;
    struct nv_error err = {0};
    fdstash_init(&s);
    int fd = pipe_end();
    assert_int_equal(fdstash_give(&s, "data", fd, &err), 0);
    assert_int_equal(fdstash_count(&s), 1);
    assert_int_equal(fdstash_peek(&s, "data"), fd);
    assert_int_equal(fdstash_take(&s, "data"), fd);
    assert_int_equal(fdstash_count(&s), 0);
    assert_int_equal(fdstash_take(&s, "data"), -ENOENT);
    assert_true(fd_is_open(fd)); /* ownership came back to us */
    close(fd);
    fdstash_cleanup(&s);
}

static void give_replaces_and_closes_old(void **state)
{
    (void)state;
    struct fdstash s;
    fdstash_init(&s);
    int first = pipe_end(), second = pipe_end();
    assert_int_equal(fdstash_give(&s, "ctrl", first, NULL), 0);
    assert_int_equal(fdstash_give(&s, "ctrl", second, NULL), 0);
    assert_false(fd_is_open(first));
    assert_int_equal(fdstash_count(&s), 1);
    assert_int_equal(fdstash_peek(&s, "ctrl"), second);
    /* Giving the same descriptor again under its name must not close it. */
    assert_int_equal(fdstash_give(&s, "ctrl", second, NULL), 0);
    assert_true(fd_is_open(second));
    fdstash_cleanup(&s);
    assert_false(fd_is_open(second));
}

static void take_and_peek_missing(void **state)
{
    (void)state;
    struct fdstash s;
    fdstash_init(&s);
    assert_int_equal(fdstash_take(&s, "nothing"), -ENOENT);
    assert_int_equal(fdstash_peek(&s, "nothing"), -ENOENT);
    assert_int_equal(fdstash_take(&s, NULL), -ENOENT);
    fdstash_cleanup(&s);
}

static void cleanup_closes_everything(void **state)
{
    (void)state;
    struct fdstash s;
    fdstash_init(&s);
    int fds[5];
    const char *names[5] = {"a", "b", "c", "d", "e"};
    for (int i = 0; i < 5; i++) {
        fds[i] = pipe_end();
        assert_int_equal(fdstash_give(&s, names[i], fds[i], NULL), 0);
    }
    assert_int_equal(fdstash_count(&s), 5);
    fdstash_cleanup(&s);
    assert_int_equal(fdstash_count(&s), 0);
    for (int i = 0; i < 5; i++)
        assert_false(fd_is_open(fds[i]));
}

static void bad_names_refused_and_fd_closed(void **state)
{
    (void)state;
    struct fdstash s;
    struct nv_error err = {0};
    char too_long[FDSTASH_NAME_MAX + 2];
    memset(too_long, 'x', sizeof(too_long) - 1);
    too_long[sizeof(too_long) - 1] = '\0';
    char longest[FDSTASH_NAME_MAX + 1];
    memset(longest, 'y', sizeof(longest) - 1);
    longest[sizeof(longest) - 1] = '\0';
    const struct {
        const char *name;
        int code;
    } cases[] = {
        {"", -EINVAL},          {"3", -EINVAL},
        {"7abc", -EINVAL},      {"a b", -EINVAL},
        {"tab\there", -EINVAL}, {"del\x7f", -EINVAL},
        {"\xc3\xa9", -EINVAL},  {too_long, -ENAMETOOLONG},
    };
    fdstash_init(&s);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = pipe_end();
        nv_error_clear(&err);
        assert_int_equal(fdstash_give(&s, cases[i].name, fd, &err), cases[i].code);
        assert_int_equal(err.code, cases[i].code);
        assert_true(err.msg[0] != '\0');
        assert_false(fd_is_open(fd)); /* ownership passed, so the failure closed it */
    }
    assert_int_equal(fdstash_give(&s, NULL, pipe_end(), &err), -EINVAL);
    assert_int_equal(fdstash_count(&s), 0);
    assert_int_equal(fdstash_give(&s, longest, pipe_end(), &err), 0);
    assert_int_equal(fdstash_give(&s, "data-fd.1:x", pipe_end(), &err), 0);
    assert_int_equal(fdstash_give(&s, "ok", -1, &err), -EBADF);
    assert_int_equal(fdstash_count(&s), 2);
    fdstash_cleanup(&s);
}

static void dup_sets_cloexec(void **state)
{
    (void)state;
    struct nv_error err = {0};
    int fd = pipe_end();
    int copy = fdstash_dup(fd, &err);
    assert_true(copy >= 3);
    assert_int_not_equal(copy, fd);
    assert_true(has_cloexec(copy));
    close(copy);
    close(fd);
    assert_int_equal(fdstash_dup(fd, &err), -EBADF);
    assert_non_null(strstr(err.msg, "cannot duplicate"));
}

/* ---- SCM_RIGHTS ---------------------------------------------------------- */

static void send_fds(int sock, const int *fds, size_t n)
{
    char byte = 'x';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    size_t space = CMSG_SPACE(n * sizeof(int));
    unsigned char *control = calloc(1, space ? space : 1);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n) {
        msg.msg_control = control;
        msg.msg_controllen = space;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(n * sizeof(int));
        memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    }
    assert_int_equal(sendmsg(sock, &msg, 0), 1);
    free(control);
}

static void sockpair(int sv[2])
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

static void recv_zero_fds(void **state)
{
    (void)state;
    int sv[2], fds[2];
    size_t n = 99;
    char buf[8];
    sockpair(sv);
    send_fds(sv[0], NULL, 0);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, sizeof(buf), fds, 2, &n, NULL), 1);
    assert_int_equal(n, 0);
    assert_int_equal(buf[0], 'x');
    close(sv[0]);
    close(sv[1]);
}

static void recv_one_fd(void **state)
{
    (void)state;
    int sv[2], rd, wr, got = -1;
    size_t n = 0;
    char buf[4];
    sockpair(sv);
    make_pipe(&rd, &wr);
    send_fds(sv[0], &rd, 1);
    close(rd);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, sizeof(buf), &got, 1, &n, NULL), 1);
    assert_int_equal(n, 1);
    assert_true(has_cloexec(got));
    /* It is the same pipe: what goes in at wr comes out at the received end. */
    assert_int_equal(write(wr, "ok", 2), 2);
    assert_int_equal(read(got, buf, 2), 2);
    assert_memory_equal(buf, "ok", 2);
    close(got);
    close(wr);
    close(sv[0]);
    close(sv[1]);
}

static void recv_several_fds(void **state)
{
    (void)state;
    int sv[2], sent[4], got[4];
    size_t n = 0;
    char buf[1];
    sockpair(sv);
    for (int i = 0; i < 4; i++)
        sent[i] = pipe_end();
    send_fds(sv[0], sent, 4);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, 1, got, 4, &n, NULL), 1);
    assert_int_equal(n, 4);
    for (int i = 0; i < 4; i++) {
        assert_true(has_cloexec(got[i]));
        close(got[i]);
        close(sent[i]);
    }
    close(sv[0]);
    close(sv[1]);
}

/* More descriptors than asked for (within the surplus room): error, none kept. */
static void recv_surplus_fds_closed(void **state)
{
    (void)state;
    int sv[2], sent[3], got[1];
    size_t n = 7;
    char buf[1];
    struct nv_error err = {0};
    sockpair(sv);
    for (int i = 0; i < 3; i++)
        sent[i] = pipe_end();
    send_fds(sv[0], sent, 3);
    for (int i = 0; i < 3; i++)
        close(sent[i]);
    struct fdleak_snapshot before;
    fdleak_take(&before);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, 1, got, 1, &n, &err), -E2BIG);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err.msg, "received 3 descriptors"));
    assert_int_equal(fdleak_count_new(&before), 0);
    close(sv[0]);
    close(sv[1]);
}

/* Far more than fit in the control buffer: the kernel truncates (MSG_CTRUNC). */
static void recv_truncated_fds_closed(void **state)
{
    (void)state;
    enum { SENT = 40 };
    int sv[2], sent[SENT], got[1];
    size_t n = 7;
    char buf[1];
    struct nv_error err = {0};
    sockpair(sv);
    for (int i = 0; i < SENT; i++)
        sent[i] = pipe_end();
    send_fds(sv[0], sent, SENT);
    for (int i = 0; i < SENT; i++)
        close(sent[i]);
    struct fdleak_snapshot before;
    fdleak_take(&before);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, 1, got, 1, &n, &err), -EMSGSIZE);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err.msg, "truncated"));
    assert_int_equal(fdleak_count_new(&before), 0);
    close(sv[0]);
    close(sv[1]);
}

static void recv_peer_closed_and_bad_args(void **state)
{
    (void)state;
    int sv[2], got[1];
    size_t n = 3;
    char buf[1];
    struct nv_error err = {0};
    sockpair(sv);
    close(sv[0]);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, 1, got, 1, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, 0, got, 1, &n, &err), -EINVAL);
    close(sv[1]);
    assert_int_equal(fdstash_recvmsg(sv[1], buf, 1, got, 1, &n, &err), -EBADF);
}

/* ---- inherited descriptors ---------------------------------------------- */

static void parse_fd_numbers(void **state)
{
    (void)state;
    int fd = -1;
    struct nv_error err = {0};
    assert_int_equal(fdstash_parse_fd("3", &fd, &err), 0);
    assert_int_equal(fd, 3);
    assert_int_equal(fdstash_parse_fd("fd=17", &fd, &err), 0);
    assert_int_equal(fd, 17);
    assert_int_equal(fdstash_parse_fd("0", &fd, &err), 0);
    assert_int_equal(fd, 0);
    const char *bad[] = {
        "",    "fd=", "-1", "+3", "3x", " 3", "abc", "fd=2147483648", "99999999999999999999999",
        "fd:3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fd = -5;
        assert_true(fdstash_parse_fd(bad[i], &fd, &err) < 0);
        assert_int_equal(fd, -5);
        assert_non_null(strstr(err.msg, "not a descriptor number"));
    }
    assert_true(fdstash_parse_fd(NULL, &fd, &err) < 0);
}

static int listening_socket(void)
{
    int s = socket(AF_UNIX, SOCK_STREAM, 0); /* no CLOEXEC: as a parent hands it over */
    assert_true(s >= 0);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    /* Linux abstract namespace: nothing to clean up on disk. */
    snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "nvtpm-test-%d-%d", getpid(), s);
    assert_int_equal(bind(s, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(s, 1), 0);
    return s;
}

static void check_fd_kinds(void **state)
{
    (void)state;
    struct nv_error err = {0};
    int lst = listening_socket();
    int sv[2];
    sockpair(sv);
    int unconnected = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int dgram = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int pipe_fd = pipe_end();
    char path[] = "/tmp/nvtpm-fdstash-XXXXXX";
    int file = mkostemp(path, O_CLOEXEC);
    assert_true(file >= 0);
    unlink(path);

    assert_int_equal(fdstash_check_fd(lst, FDSTASH_LISTENING_SOCKET, &err), 0);
    assert_int_equal(fdstash_check_fd(sv[0], FDSTASH_CONNECTED_SOCKET, &err), 0);
    assert_int_equal(
        fdstash_check_fd(sv[0], FDSTASH_LISTENING_SOCKET | FDSTASH_CONNECTED_SOCKET, &err), 0);
    assert_int_equal(fdstash_check_fd(file, FDSTASH_FILE, &err), 0);

    assert_int_equal(fdstash_check_fd(lst, FDSTASH_CONNECTED_SOCKET, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "is not a connected socket"));
    assert_int_equal(fdstash_check_fd(sv[0], FDSTASH_LISTENING_SOCKET, &err), -EINVAL);
    assert_int_equal(fdstash_check_fd(file, FDSTASH_LISTENING_SOCKET, &err), -EINVAL);
    assert_int_equal(fdstash_check_fd(pipe_fd, FDSTASH_FILE, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "is not a regular file or block device"));
    assert_int_equal(
        fdstash_check_fd(unconnected, FDSTASH_LISTENING_SOCKET | FDSTASH_CONNECTED_SOCKET, &err),
        -EINVAL);
    assert_int_equal(fdstash_check_fd(dgram, FDSTASH_CONNECTED_SOCKET, &err), -EINVAL);
    assert_int_equal(fdstash_check_fd(lst, FDSTASH_FILE, &err), -EINVAL);
    /* a datagram socket pair's end is connected (swtpm's tests hand such ends over) */
    int dpair[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dpair), 0);
    assert_int_equal(fdstash_check_fd(dpair[0], FDSTASH_CONNECTED_SOCKET, &err), 0);
    close(dpair[0]);
    close(dpair[1]);
    int chr = open("/dev/null", O_RDWR | O_CLOEXEC);
    assert_int_equal(fdstash_check_fd(chr, FDSTASH_CHAR_DEVICE, &err), 0);
    assert_int_equal(fdstash_check_fd(chr, FDSTASH_FILE, &err), -EINVAL);
    close(chr);

    int closed = pipe_end();
    close(closed);
    assert_int_equal(fdstash_check_fd(closed, FDSTASH_FILE, &err), -EBADF);
    assert_non_null(strstr(err.msg, "is not open"));
    assert_int_equal(fdstash_check_fd(-1, FDSTASH_FILE, &err), -EBADF);

    close(lst);
    close(sv[0]);
    close(sv[1]);
    close(unconnected);
    close(dgram);
    close(pipe_fd);
    close(file);
}

static void inherit_adopts_and_sets_cloexec(void **state)
{
    (void)state;
    struct fdstash s;
    struct nv_error err = {0};
    char ref[32], name[16];
    fdstash_init(&s);
    int lst = listening_socket();
    assert_false(has_cloexec(lst));
    snprintf(ref, sizeof(ref), "fd=%d", lst);
    snprintf(name, sizeof(name), "%d", lst);
    assert_int_equal(fdstash_inherit(&s, ref, FDSTASH_LISTENING_SOCKET, &err), lst);
    assert_true(has_cloexec(lst));
    assert_int_equal(fdstash_peek(&s, name), lst);
    /* Adopting it twice is harmless. */
    assert_int_equal(fdstash_inherit(&s, name, FDSTASH_LISTENING_SOCKET, &err), lst);
    assert_int_equal(fdstash_count(&s), 1);

    /* The wrong kind is refused, and the descriptor stays the caller's, open. */
    int other = listening_socket();
    snprintf(ref, sizeof(ref), "%d", other);
    assert_int_equal(fdstash_inherit(&s, ref, FDSTASH_CONNECTED_SOCKET | FDSTASH_FILE, &err),
                     -EINVAL);
    assert_true(fd_is_open(other));
    assert_false(has_cloexec(other));
    assert_int_equal(fdstash_peek(&s, ref), -ENOENT);
    assert_int_equal(fdstash_inherit(&s, "fd=x", FDSTASH_FILE, &err), -EINVAL);
    close(other);
    fdstash_cleanup(&s);
    assert_false(fd_is_open(lst));
}

/* ---- socket activation -------------------------------------------------- */

/* Socket activation needs descriptors 3, 4, ... so each case runs in a child
 * that arranges them; the child reports through its exit status. */
#define CHILD_CHECK(cond)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "child check failed at line %d: %s\n", __LINE__, #cond);               \
            _exit(10);                                                                             \
        }                                                                                          \
    } while (0)

static void child_place_sockets(int count)
{
    int tmp[8];
    for (int i = 0; i < count; i++)
        tmp[i] = listening_socket();
    for (int i = 0; i < count; i++) {
        int target = 100 + i;
        CHILD_CHECK(dup2(tmp[i], target) == target);
        close(tmp[i]);
    }
    for (int fd = 3; fd < 100; fd++)
        close(fd);
    for (int i = 0; i < count; i++) {
        CHILD_CHECK(dup2(100 + i, 3 + i) == 3 + i);
        close(100 + i);
    }
}

static void run_child(void (*body)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        body();
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void set_listen_env(pid_t pid, const char *count, const char *names)
{
    char text[32];
    snprintf(text, sizeof(text), "%d", (int)pid);
    setenv("LISTEN_PID", text, 1);
    setenv("LISTEN_FDS", count, 1);
    if (names)
        setenv("LISTEN_FDNAMES", names, 1);
    else
        unsetenv("LISTEN_FDNAMES");
}

static void child_imports_named(void)
{
    struct fdstash s;
    struct nv_error err = {0};
    child_place_sockets(3);
    set_listen_env(getpid(), "3", "data:ctrl");
    fdstash_init(&s);
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == 3);
    CHILD_CHECK(fdstash_peek(&s, "data") == 3);
    CHILD_CHECK(fdstash_peek(&s, "ctrl") == 4);
    CHILD_CHECK(fdstash_peek(&s, "listen-2") == 5);
    CHILD_CHECK(has_cloexec(3) && has_cloexec(4) && has_cloexec(5));
    CHILD_CHECK(!getenv("LISTEN_PID") && !getenv("LISTEN_FDS") && !getenv("LISTEN_FDNAMES"));
    fdstash_cleanup(&s);
    CHILD_CHECK(!fd_is_open(3) && !fd_is_open(4) && !fd_is_open(5));
}

static void child_ignores_other_pid(void)
{
    struct fdstash s;
    child_place_sockets(1);
    set_listen_env(getppid(), "1", "data");
    fdstash_init(&s);
    CHILD_CHECK(fdstash_import_listen_fds(&s, NULL) == 0);
    CHILD_CHECK(fdstash_count(&s) == 0);
    CHILD_CHECK(getenv("LISTEN_PID") != NULL); /* not ours to consume */
    CHILD_CHECK(fd_is_open(3) && !has_cloexec(3));
}

static void child_refuses_bad_env(void)
{
    struct fdstash s;
    struct nv_error err = {0};
    fdstash_init(&s);
    child_place_sockets(2);

    set_listen_env(getpid(), "2", "same:same");
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == -EEXIST);
    CHILD_CHECK(strstr(err.msg, "FileDescriptorName") != NULL);
    set_listen_env(getpid(), "2", "ok:9bad");
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == -EINVAL);
    set_listen_env(getpid(), "3", "a:b:c"); /* descriptor 5 is not open */
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == -EBADF);
    int other = pipe_end();
    CHILD_CHECK(fdstash_give(&s, "taken", other, &err) == 0);
    set_listen_env(getpid(), "2", "fresh:taken");
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == -EEXIST);
    CHILD_CHECK(fdstash_peek(&s, "taken") == other && fd_is_open(other)); /* not replaced */
    CHILD_CHECK(fdstash_peek(&s, "fresh") == -ENOENT);
    CHILD_CHECK(fdstash_take(&s, "taken") == other);
    close(other);
    set_listen_env(getpid(), "two", NULL);
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == -EINVAL);
    setenv("LISTEN_PID", "not-a-pid", 1);
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == -EINVAL);
    /* After every refusal nothing was adopted and the sockets are untouched. */
    CHILD_CHECK(fdstash_count(&s) == 0);
    CHILD_CHECK(fd_is_open(3) && fd_is_open(4) && !has_cloexec(3));
    unsetenv("LISTEN_PID");
    CHILD_CHECK(fdstash_import_listen_fds(&s, &err) == 0);
}

static void listen_fds_named(void **state)
{
    (void)state;
    run_child(child_imports_named);
}

static void listen_fds_other_pid(void **state)
{
    (void)state;
    run_child(child_ignores_other_pid);
}

static void listen_fds_bad_env(void **state)
{
    (void)state;
    run_child(child_refuses_bad_env);
}

/* ---- the error object ---------------------------------------------------- */

static void error_object(void **state)
{
    (void)state;
    struct nv_error err = {0};
    assert_int_equal(nv_error_set(&err, EIO, "read %s", "x"), -EIO);
    assert_int_equal(err.code, -EIO);
    assert_int_equal(nv_error_prefix(&err, -EIO, "image %s", "a.qcow2"), -EIO);
    assert_string_equal(err.msg, "image a.qcow2: read x");
    assert_int_equal(nv_error_append(&err, EBUSY, "(%d)", 7), -EBUSY);
    assert_int_equal(err.code, -EBUSY);
    assert_string_equal(err.msg, "image a.qcow2: read x (7)");
    /* Without an error object the code still comes back, not a generic -EIO. */
    assert_int_equal(nv_error_prefix(NULL, -ESTALE, "x"), -ESTALE);
    assert_int_equal(nv_error_append(NULL, -EBUSY, "x"), -EBUSY);
    assert_int_equal(nv_error_set(NULL, -ENOENT, "ignored"), -ENOENT);
    nv_error_clear(&err);
    assert_int_equal(err.code, 0);
    assert_string_equal(err.msg, "");
}

/* Last: nothing above may have left a descriptor open. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(give_take_peek),
        cmocka_unit_test(give_replaces_and_closes_old),
        cmocka_unit_test(take_and_peek_missing),
        cmocka_unit_test(cleanup_closes_everything),
        cmocka_unit_test(bad_names_refused_and_fd_closed),
        cmocka_unit_test(dup_sets_cloexec),
        cmocka_unit_test(recv_zero_fds),
        cmocka_unit_test(recv_one_fd),
        cmocka_unit_test(recv_several_fds),
        cmocka_unit_test(recv_surplus_fds_closed),
        cmocka_unit_test(recv_truncated_fds_closed),
        cmocka_unit_test(recv_peer_closed_and_bad_args),
        cmocka_unit_test(parse_fd_numbers),
        cmocka_unit_test(check_fd_kinds),
        cmocka_unit_test(inherit_adopts_and_sets_cloexec),
        cmocka_unit_test(listen_fds_named),
        cmocka_unit_test(listen_fds_other_pid),
        cmocka_unit_test(listen_fds_bad_env),
        cmocka_unit_test(error_object),
        cmocka_unit_test(fdleak_suite_check),
    };
    return cmocka_run_group_tests_name("fdstash", tests, fdleak_suite_setup, NULL);
}
