/* cmd-socket.c - `nvtpm socket`: swtpm's socket options with swtpm's
 * meanings, the state in a QCoW2 image. Everything is checked before anything
 * is created: a malformed option is one line and exit code 1. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "block.h"
#include "cli.h"
#include "json.h"
#include "fdstash.h"
#include "migration.h"
#include "nvram.h"
#include "server.h"
#include "tpm.h"

/* The key material, in pages of its own that core dumps leave out
 * (nv_secret_alloc; only when a key is given): the --key and --migration-key as read, wiped once
 * the TPM has started; the blob keys swtpm's format makes of them, needed while the server runs
 * (for a raw --key, that is the key itself). */
struct socket_secrets {
    struct nvram_key key, migration_key;
    struct mig_key key_aes, migration_key_aes; /* as swtpm makes them, for blobs */
};

struct socket_opts {
    int tpm_version;
    const char *state_path; /* the image */
    const char *state_dir;  /* --tpmstate dir=: the folder, or NULL */
    int state_fd;           /* --tpmstate fd=N, or -1 */
    unsigned state_mode;
    struct tpm_server_config server;
    struct tpm_backend_options backend;
    struct socket_secrets *sec;
    bool have_key, have_migration_key;
    bool not_need_init, daemon, print_caps, print_states, incoming, no_sync;
    const char *pid_file;
    int pid_fd;
    char *pid_written; /* the pid file written, removed at the end (malloc'd) */
    dev_t pid_dev;     /* ... if it is still that file */
    ino_t pid_ino;
    const char *runas;
    const char *log_file;
    int log_fd;
    unsigned log_level;
    const char *log_prefix; /* before every line on the log, nvtpm's and libtpms' */
    bool log_truncate;      /* the log file emptied at start, else appended to */
    char *state_buf;        /* state_path's text (malloc'd) */
    char *copies[32];       /* option values are parsed in copies: argv stays as typed */
    int ncopies;
    /* while serving */
    int dir_lock_fd;                /* DIR/.lock, held as swtpm holds it */
    enum cli_dir_state dir_state;   /* what dir= holds */
    struct mig_dir_files dir_files; /* swtpm's files there */
    struct fdstash stash;
    struct nvram_storage *storage;
    int start_code; /* the exit code of a start that failed after the sockets opened */
};

static char *copy_arg(struct socket_opts *o, const char *arg)
{
    if (o->ncopies == (int)(sizeof(o->copies) / sizeof(o->copies[0])))
        return NULL;
    return o->copies[o->ncopies++] = strdup(arg);
}

/* --runas as root: the files nvtpm makes for the TPM (image, DIR/.lock, the
 * pid and log files) belong to that user, as swtpm's do, so that the server
 * (after the drop) and the user's later runs (swtpm_setup --runas) can use
 * them. A descriptor, or a path (fd < 0). Best effort: the drop itself fails
 * loudly if something is wrong with the user. */
static void give_to_runas(const struct socket_opts *o, int fd, const char *path)
{
    struct passwd *pw = o->runas && geteuid() == 0 ? getpwnam(o->runas) : NULL;
    /* lchown: the folder may belong to that user, who could have put a link there */
    if (pw &&
        (fd >= 0 ? fchown(fd, pw->pw_uid, pw->pw_gid) : lchown(path, pw->pw_uid, pw->pw_gid)) < 0)
        fprintf(stderr, "nvtpm: --runas %s: cannot give %s to that user: %s\n", o->runas,
                path ? path : "a file", strerror(errno));
}

/* ---- option values: name=value,name,... ------------------------------------------------ */

struct kv {
    char *name, *value;
};

/* Split text (modified in place) into at most max pairs; checks every name
 * against the allowed list. Returns the count or an exit code < 0. */
static int split_kv(const char *opt, char *text, const char *const *allowed, struct kv *out,
                    int max)
{
    int n = 0;
    for (char *save = NULL, *tok = strtok_r(text, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        if (eq)
            *eq = '\0';
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, tok) == 0;
        if (!ok || n == max)
            return -cli_fail(CLI_EXIT_USAGE, "socket: %s: unknown parameter '%s'", opt, tok);
        out[n].name = tok;
        out[n].value = eq ? eq + 1 : NULL;
        n++;
    }
    return n;
}

static int need_value(const char *opt, const struct kv *kv)
{
    if (kv->value && *kv->value)
        return 0;
    return cli_fail(CLI_EXIT_USAGE, "socket: %s: '%s' needs a value", opt, kv->name);
}

static int parse_uint(const char *opt, const struct kv *kv, uint64_t max, uint64_t *out)
{
    if (need_value(opt, kv))
        return CLI_EXIT_USAGE;
    if (nv_parse_u64(kv->value, max, out) < 0)
        return cli_fail(CLI_EXIT_USAGE, "socket: %s: %s=%s is not a number up to %llu", opt,
                        kv->name, kv->value, (unsigned long long)max);
    return 0;
}

static int parse_mode(const char *opt, const struct kv *kv, unsigned *mode)
{
    char *end;
    if (need_value(opt, kv))
        return CLI_EXIT_USAGE;
    unsigned long m = strtoul(kv->value, &end, 8);
    if (*end || m > 0777)
        return cli_fail(CLI_EXIT_USAGE, "socket: %s: mode=%s is not an octal mode", opt, kv->value);
    *mode = (unsigned)m;
    return 0;
}

static int parse_fd_value(const char *opt, const struct kv *kv, int *fd)
{
    uint64_t n;
    int r = parse_uint(opt, kv, 1u << 30, &n);
    *fd = (int)n;
    return r;
}

/* uid= or gid=: a number or, as swtpm takes them, a user or group name. */
static int parse_owner(const char *opt, const struct kv *kv, long *id)
{
    uint64_t v;
    if (need_value(opt, kv))
        return CLI_EXIT_USAGE;
    if (nv_parse_u64(kv->value, 1u << 31, &v) == 0) {
        *id = (long)v;
        return 0;
    }
    struct passwd *pw = kv->name[0] == 'u' ? getpwnam(kv->value) : NULL;
    struct group *gr = kv->name[0] == 'g' ? getgrnam(kv->value) : NULL;
    if (!pw && !gr)
        return cli_fail(CLI_EXIT_USAGE, "socket: %s: %s=%s is no %s", opt, kv->name, kv->value,
                        kv->name[0] == 'u' ? "user" : "group");
    *id = pw ? (long)pw->pw_uid : (long)gr->gr_gid;
    return 0;
}

/* --server and --ctrl */
static int parse_channel(const char *opt, char *text, struct tpm_channel_config *c, bool is_ctrl)
{
    static const char *const allowed[] = {"type", "port",       "bindaddr",  "path",
                                          "fd",   "clientfd",   "mode",      "uid",
                                          "gid",  "disconnect", "terminate", NULL};
    struct kv kv[16];
    int n = split_kv(opt, text, allowed, kv, 16), r = 0;
    if (n < 0)
        return -n;
    const char *type = NULL;
    c->uid = c->gid = -1;
    for (int i = 0; i < n && r == 0; i++) {
        uint64_t v;
        const char *k = kv[i].name;
        if (strcmp(k, "type") == 0 && !(r = need_value(opt, &kv[i])))
            type = kv[i].value;
        else if (strcmp(k, "port") == 0 && !(r = parse_uint(opt, &kv[i], 65535, &v)))
            c->port = (unsigned)v;
        else if (strcmp(k, "bindaddr") == 0 && !(r = need_value(opt, &kv[i])))
            c->bindaddr = kv[i].value;
        else if (strcmp(k, "path") == 0 && !(r = need_value(opt, &kv[i])))
            c->path = kv[i].value;
        else if (strcmp(k, "fd") == 0 && !(r = parse_fd_value(opt, &kv[i], &c->fd)))
            c->type = TPM_CHANNEL_FD;
        else if (strcmp(k, "clientfd") == 0 && is_ctrl &&
                 !(r = parse_fd_value(opt, &kv[i], &c->fd)))
            c->type = TPM_CHANNEL_CLIENTFD;
        else if (strcmp(k, "mode") == 0)
            r = parse_mode(opt, &kv[i], &c->mode);
        else if (strcmp(k, "uid") == 0 || strcmp(k, "gid") == 0)
            r = parse_owner(opt, &kv[i], k[0] == 'u' ? &c->uid : &c->gid);
        else if (strcmp(k, "disconnect") == 0 && !is_ctrl)
            c->disconnect = true;
        else if (strcmp(k, "terminate") == 0 && is_ctrl)
            c->terminate = true;
        else if (r == 0)
            r = cli_fail(CLI_EXIT_USAGE, "socket: %s: '%s' does not apply here", opt, k);
    }
    if (r)
        return r;
    if (!type)
        type = "tcp"; /* swtpm's default */
    if (c->type == TPM_CHANNEL_FD || c->type == TPM_CHANNEL_CLIENTFD)
        return 0;
    if (strcmp(type, "tcp") == 0) {
        c->type = TPM_CHANNEL_TCP;
        if (!c->port)
            return cli_fail(CLI_EXIT_USAGE, "socket: %s: type=tcp needs port=", opt);
    } else if (strcmp(type, "unixio") == 0) {
        c->type = TPM_CHANNEL_UNIX;
        if (!c->path)
            return cli_fail(CLI_EXIT_USAGE, "socket: %s: type=unixio needs path= or fd=", opt);
    } else {
        return cli_fail(CLI_EXIT_USAGE, "socket: %s: type=%s (tcp or unixio)", opt, type);
    }
    return 0;
}

/* --tpmstate dir=D|file=F|backend-uri=URI|fd=N[,mode=M][,lock] */
static int parse_tpmstate(char *text, struct socket_opts *o)
{
    static const char *const allowed[] = {"dir", "file", "backend-uri", "fd", "mode", "lock", NULL};
    struct kv kv[8];
    int n = split_kv("--tpmstate", text, allowed, kv, 8), r = 0;
    const char *dir = NULL, *file = NULL;
    if (n < 0)
        return -n;
    for (int i = 0; i < n && r == 0; i++) {
        const char *k = kv[i].name, *v = kv[i].value;
        if (strcmp(k, "dir") == 0 && !(r = need_value("--tpmstate", &kv[i])))
            dir = v;
        else if (strcmp(k, "file") == 0 && !(r = need_value("--tpmstate", &kv[i])))
            file = v;
        else if (strcmp(k, "backend-uri") == 0 && !(r = need_value("--tpmstate", &kv[i]))) {
            if (strncmp(v, "file://", 7) == 0)
                file = v + 7;
            else if (strncmp(v, "dir://", 6) == 0)
                dir = v + 6;
            else
                r = cli_fail(CLI_EXIT_USAGE,
                             "socket: --tpmstate: backend-uri=%s (file:// or dir://)", v);
        } else if (strcmp(k, "fd") == 0)
            r = parse_fd_value("--tpmstate", &kv[i], &o->state_fd);
        else if (strcmp(k, "mode") == 0)
            r = parse_mode("--tpmstate", &kv[i], &o->state_mode);
        /* lock: the image is always locked (QEMU's lock bytes) */
    }
    if (r)
        return r;
    if (!!dir + !!file + (o->state_fd >= 0) != 1)
        return cli_fail(CLI_EXIT_USAGE, "socket: --tpmstate needs one of dir=, file=, "
                                        "backend-uri= or fd=");
    o->state_dir = dir;
    free(o->state_buf);
    o->state_buf = NULL;
    if (dir) /* the image, beside where swtpm keeps its files (socket-dir.c) */
        r = asprintf(&o->state_buf, "%s/%s", dir, "tpm-00.qcow2") < 0 ? -1 : 0;
    else if (file)
        r = (o->state_buf = strdup(file)) ? 0 : -1;
    if (r < 0) {
        o->state_buf = NULL;
        o->state_path = NULL;
        return cli_fail(CLI_EXIT_ERROR, "socket: --tpmstate: %s", strerror(ENOMEM));
    }
    o->state_path = o->state_fd >= 0 ? NULL : o->state_buf;
    return 0;
}

static int parse_list(const char *opt, char *text, const char *const *allowed,
                      struct socket_opts *o)
{
    struct kv kv[8];
    int n = split_kv(opt, text, allowed, kv, 8);
    if (n < 0)
        return -n;
    for (int i = 0; i < n; i++) {
        const char *k = kv[i].name;
        if (strcmp(k, "not-need-init") == 0)
            o->not_need_init = true;
        else if (strcmp(k, "startup-clear") == 0)
            o->backend.startup = TPM_STARTUP_CLEAR;
        else if (strcmp(k, "startup-state") == 0)
            o->backend.startup = TPM_STARTUP_STATE;
        else if (strcmp(k, "startup-deactivated") == 0)
            o->backend.startup = TPM_STARTUP_DEACTIVATED;
        else if (strcmp(k, "startup-none") == 0)
            o->backend.startup = TPM_STARTUP_NONE;
        else if (strcmp(k, "disable-auto-shutdown") == 0)
            o->backend.disable_auto_shutdown = true;
        else if (strcmp(k, "reject-locality-4") == 0)
            o->server.reject_locality_4 = o->backend.reject_locality_4 = true;
        else if (strcmp(k, "incoming") == 0)
            o->incoming = o->server.migration = true;
        else if (strcmp(k, "release-lock-outgoing") == 0)
            o->server.release_lock_outgoing = o->server.migration = true;
        /* allow-set-locality: the control channel always may */
    }
    return 0;
}

static int parse_pid_or_log(const char *opt, char *text, struct socket_opts *o)
{
    static const char *const pid_keys[] = {"file", "fd", NULL};
    static const char *const log_keys[] = {"file", "fd", "level", "prefix", "truncate", NULL};
    bool is_log = strcmp(opt, "--log") == 0;
    struct kv kv[8];
    int n = split_kv(opt, text, is_log ? log_keys : pid_keys, kv, 8), r = 0;
    if (n < 0)
        return -n;
    for (int i = 0; i < n && r == 0; i++) {
        const char *k = kv[i].name;
        uint64_t v;
        if (strcmp(k, "file") == 0 && !(r = need_value(opt, &kv[i])))
            *(is_log ? &o->log_file : &o->pid_file) = kv[i].value;
        else if (strcmp(k, "fd") == 0)
            r = parse_fd_value(opt, &kv[i], is_log ? &o->log_fd : &o->pid_fd);
        else if (strcmp(k, "level") == 0 && !(r = parse_uint(opt, &kv[i], 100, &v)))
            o->log_level = (unsigned)v;
        else if (strcmp(k, "prefix") == 0 && !(r = need_value(opt, &kv[i])))
            o->log_prefix = o->backend.debug_prefix = kv[i].value;
        else if (strcmp(k, "truncate") == 0)
            o->log_truncate = true;
    }
    return r;
}

/* -p PORT / -f FD: the data channel as swtpm's first options named it */
static int parse_data_shorthand(int c, char *arg, struct socket_opts *o)
{
    char text[64];
    if (o->server.data.type != TPM_CHANNEL_NONE)
        return cli_fail(CLI_EXIT_USAGE, "socket: -%c: the data channel is given twice", c);
    snprintf(text, sizeof(text), "%s=%s", c == 'p' ? "type=tcp,port" : "fd", arg);
    return parse_channel(c == 'p' ? "--port" : "--fd", text, &o->server.data, false);
}

/* ---- help, capabilities, states ------------------------------------------------------ */

static const char socket_usage[] =
    "Usage: nvtpm socket [--tpm2] --tpmstate file=IMG|dir=DIR|backend-uri=URI|fd=N[,mode=M]\n"
    "                    --server type=tcp,port=P[,bindaddr=A][,disconnect]\n"
    "                           | type=unixio,path=P[,mode=M][,uid=U][,gid=G] | fd=N\n"
    "                    --ctrl type=tcp,port=P[,bindaddr=A] | type=unixio,path=P|fd=N|clientfd=N\n"
    "                           [,mode=M][,uid=U][,gid=G][,terminate]\n"
    "                    [--key KEY] [--migration-key KEY] [--pid file=F|fd=N]\n"
    "                    [--log file=F|fd=N[,level=N][,prefix=P][,truncate]]\n"
    "                    [--flags not-need-init,startup-clear|\n"
    "                     startup-state|startup-deactivated|startup-none,disable-auto-shutdown]\n"
    "                    [--locality reject-locality-4[,allow-set-locality]]\n"
    "                    [--migration incoming,release-lock-outgoing] [--platform port=P]\n"
    "                    [--no-sync] [-d|--daemon] [-t|--terminate] [-r|--runas USER]\n"
    "                    [--print-capabilities] [--print-states] [-h|--help]\n"
    "\n"
    "Serve a TPM (TPM 1.2, or TPM 2.0 with --tpm2, as swtpm) whose state lives in a\n"
    "QCoW2 image: swtpm's data and control protocols, so QEMU's tpm-emulator,\n"
    "swtpm_ioctl and tpm2-tss (swtpm: and mssim:) work unchanged.\n"
    "\n"
    "  --tpmstate   file=IMG: the image, created (4 MiB, mode=, default 0640) if absent and\n"
    "               formatted if blank; dir=DIR: the image DIR/tpm-00.qcow2, swtpm's files\n"
    "               there imported when alone, an error when newer than the image\n"
    "               (docs/libvirt.md); backend-uri=file://IMG or dir://DIR; fd=N: an\n"
    "               image passed as a descriptor\n"
    "  --server     the data channel (TCP on 127.0.0.1 unless bindaddr=; UNIX sockets\n"
    "               mode 0600 unless mode=); fd=N: an inherited listening or connected socket\n"
    "  --ctrl       the control channel; clientfd=N: an inherited connected socket;\n"
    "               terminate: exit when the control connection closes\n"
    "  --key        the image's key (swtpm's syntax, see nvtpm create --help); also\n"
    "               opens state blobs swtpm encrypted with the same --key\n"
    "  --migration-key  state blobs leave encrypted with it (swtpm's AES-CBC and\n"
    "               HMAC-SHA256) and may arrive so; plain blobs are accepted too\n"
    "  --platform   the MS simulator's platform port, for tpm2-tss's mssim TCTI\n"
    "  --no-sync    commits skip fdatasync (faster; an acknowledged write can be lost)\n"
    "  --log        level>=5 logs every command and response, and libtpms' debug output\n"
    "               at its level N-4 (as swtpm); prefix=P before every line; truncate:\n"
    "               the file emptied first, else appended to\n"
    "  --pid, --log file=  never opened through a symbolic link (exit 1, as swtpm)\n"
    "  --migration  incoming: start even while another process (the source) owns the\n"
    "               image; SET_STATEBLOB or INIT takes it. release-lock-outgoing: give it up\n"
    "               once the savestate blob is read; LOCK_STORAGE takes it back\n"
    "  -t           exit when the data connection closes\n"
    "\n"
    "The sockets listen before the TPM starts (an encrypted image's key derivation\n"
    "delays the first answer, not the socket); a start that fails still ends the\n"
    "process with its exit code before any request is answered.\n"
    "\n"
    "Exit codes: 0 clean exit, 1 usage, 2 not an nvtpm image or damaged, 4 key missing,\n"
    "5 wrong key, 6 key given for a plain image, 7 the image (or dir=) is in use, 8 the\n"
    "image holds the other TPM version's state, 9 other errors. See docs/nvtpm-socket.md.\n";

static int print_capabilities(int tpm_version)
{
    static const char *const features[] = {"tpm-1.2",
                                           "tpm-2.0",
                                           "tpm-send-command-header",
                                           "flags-opt-startup",
                                           "cmdarg-key-fd",
                                           "cmdarg-pwd-fd",
                                           "cmdarg-print-states",
                                           "nvram-backend-dir",
                                           "nvram-backend-file",
                                           NULL};
    /* libtpms' TPM 2 RSA key sizes; swtpm lists them with --tpm2 only */
    static const char *const tpm2_features[] = {"rsa-keysize-1024", "rsa-keysize-2048",
                                                "rsa-keysize-3072", NULL};
    json_object *o = json_object_new_object(), *a = json_object_new_array();
    json_object_object_add(o, "type", json_object_new_string("swtpm"));
    for (const char *const *f = features; *f; f++)
        json_object_array_add(a, json_object_new_string(*f));
    for (const char *const *f = tpm2_features; tpm_version == 2 && *f; f++)
        json_object_array_add(a, json_object_new_string(*f));
    json_object_object_add(o, "features", a);
    json_object_object_add(o, "version", json_object_new_string(NVTPM_VERSION));
    printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_SPACED));
    json_object_put(o);
    return 0;
}

/* swtpm's text exactly (tools compare it): no spaces inside the entries, no
 * newline at the end. */
static void print_state_list(const long long sizes[NVRAM_BLOBS])
{
    printf("{ \"type\": \"swtpm\", \"states\": [");
    const char *sep = " ";
    for (int b = 0; b < NVRAM_BLOBS; b++) {
        if (sizes[b] < 0)
            continue;
        printf("%s{\"name\": \"%s\", \"size\": %lld}", sep, nvram_blob_name(b), sizes[b]);
        sep = ", ";
    }
    printf("%s] }", sep[0] == ',' ? " " : "");
    fflush(stdout);
}

/* The blobs of the TPM the server would serve: the image's, or for dir=
 * holding only swtpm's files, those files'. */
static int print_states(const struct socket_opts *o)
{
    long long sizes[NVRAM_BLOBS] = {-1, -1, -1};
    if (o->state_dir) {
        enum cli_dir_state ds;
        struct mig_dir_files files;
        int code = cli_dir_inspect(o->state_dir, o->state_path, o->tpm_version, &ds, &files);
        if (code)
            return code;
        for (int b = 0; b < NVRAM_BLOBS && ds == CLI_DIR_SWTPM; b++)
            sizes[b] = files.present & (1u << b) ? files.size[b] : -1;
        if (ds != CLI_DIR_IMAGE) {
            print_state_list(sizes);
            return 0;
        }
    }
    struct nv_error err = {0};
    struct nvram_info info;
    struct bdrv_node *bs = bdrv_open(o->state_path, 0, NULL, &err);
    int r = bs ? nvram_inspect(bs, NULL, 0, &info, &err) : err.code;
    if (bs)
        bdrv_close(bs);
    if (r < 0 && r != -ENOENT && r != -ENODATA)
        return cli_fail(cli_exit_code(&err, r), "%s", err.msg);
    for (int b = 0; r == 0 && b < NVRAM_BLOBS; b++) {
        int cur = info.blobs[b].current;
        if (cur >= 0 && !info.blobs[b].slot[cur].deleted)
            sizes[b] = info.blobs[b].slot[cur].length;
    }
    print_state_list(sizes);
    return 0;
}

/* ---- the image ----------------------------------------------------------------------- */

/* Busy: name the image and, where /proc tells, the holder. */
static int busy_message(const char *spec, const struct nv_error *err)
{
    struct nv_error e2 = {0};
    struct bdrv_node *bs = bdrv_open(spec, 0, NULL, &e2);
    struct bdrv_lock_holder h[8];
    size_t n = 0;
    if (bs) {
        bdrv_lock_holders(bs, h, 8, &n, NULL);
        bdrv_close(bs);
    }
    for (size_t i = 0; i < n; i++)
        if (!h[i].self && (h[i].qemu_perm & 2))
            return cli_fail(CLI_EXIT_BUSY, "%s is in use by process %d (%s), which owns it", spec,
                            h[i].pid, h[i].name);
    return cli_fail(CLI_EXIT_BUSY, "%s", err->msg);
}

/* The image, created if absent, owned (--migration incoming: unowned while
 * the source owns it; INIT or SET_STATEBLOB claims it then). */
static struct nvram_storage *open_state(struct socket_opts *o, int *code)
{
    struct nv_error err = {0};
    const char *spec = o->state_path;
    if (o->state_fd >= 0) {
        if (fdstash_check_fd(o->state_fd, FDSTASH_FILE, &err) < 0 ||
            fdstash_give(&o->stash, "tpmstate", o->state_fd, &err) < 0) {
            *code = cli_fail(CLI_EXIT_USAGE, "socket: --tpmstate fd=%d: %s", o->state_fd, err.msg);
            return NULL;
        }
        spec = "fd:tpmstate";
    }
    struct nvram_storage_options so = {.spec = spec,
                                       .stash = &o->stash,
                                       .create = o->state_fd < 0,
                                       .create_mode = o->state_mode ? o->state_mode : 0640,
                                       .open_unowned_if_busy = o->incoming};
    struct nvram_storage *st = nvram_storage_open(&so, &err);
    if (!st)
        *code = err.code == -EBUSY ? busy_message(spec, &err)
                                   : cli_fail(cli_exit_code(&err, err.code), "%s", err.msg);
    else if (nvram_storage_created(st))
        give_to_runas(o, -1, spec);
    return st;
}

/* ---- once the sockets exist: daemon, pid file, user ------------------------------------- */

/* The pid file, opened before --daemon detaches so that its caller still
 * sees a refusal. As swtpm opens it: never through a symbolic link (one
 * planted in a world-writable folder would have a root-run server overwrite
 * the link's target: ELOOP, exit 1), and a stale file of an earlier run is
 * overwritten. Returns an exit code; the message is printed. */
static int open_pid(struct socket_opts *o, int *fd)
{
    *fd = o->pid_fd;
    if (o->pid_fd < 0)
        *fd = open(o->pid_file, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (*fd < 0)
        return cli_fail(CLI_EXIT_USAGE, "--pid: %s: %s", o->pid_file, strerror(errno));
    return 0;
}

/* Write the pid into fd (open_pid's) and close it; the path is kept (for
 * fd=, what the descriptor names), so that the process removes the file when
 * it ends, as swtpm does. */
static int write_pid(struct socket_opts *o, int fd, struct nv_error *err)
{
    char text[32], link[64];
    int n = snprintf(text, sizeof(text), "%d", (int)getpid());
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) { /* never a device's name */
        o->pid_dev = st.st_dev;
        o->pid_ino = st.st_ino;
        if (o->pid_fd >= 0) {
            char path[PATH_MAX];
            snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
            ssize_t len = readlink(link, path, sizeof(path) - 1);
            if (len > 0 && len < (ssize_t)sizeof(path) - 1 && path[0] == '/') {
                path[len] = '\0';
                o->pid_written = strdup(path); /* (without memory: left in place at the end) */
            }
        } else {
            o->pid_written = strdup(o->pid_file);
        }
    }
    give_to_runas(o, fd, "the pid file");
    int r = write(fd, text, (size_t)n) == n ? 0 : -EIO;
    close(fd);
    return r < 0 ? nv_error_set(err, r, "--pid: cannot write the pid") : 0;
}

/* The TPM, once the sockets listen (libvirt waits 1 s for them; deriving an
 * encrypted image's key takes longer): swtpm's files imported if dir= holds
 * them alone, the image opened if it was not, the NVRAM and its key, libtpms.
 * Returns an exit code; the message is printed. */
static int start_tpm(struct socket_opts *o)
{
    struct nv_error err = {0};
    int code = 0;
    unsigned mode = o->state_mode ? o->state_mode : 0640;
    bool import = o->dir_state == CLI_DIR_SWTPM;
    if (import && (code = cli_dir_import(o->state_dir, o->state_path, o->tpm_version,
                                         o->have_key ? &o->sec->key : NULL, mode, o->log_fd,
                                         o->log_prefix)) != 0)
        return code;
    if (import)
        give_to_runas(o, -1, o->state_path);
    if (!o->storage && !(o->storage = open_state(o, &code)))
        return code;
    struct nvram_options no = {.tpm_version = o->tpm_version,
                               .format_blank = true,
                               .key = o->have_key ? &o->sec->key : NULL,
                               .keyless = !o->have_key,
                               .no_sync = o->no_sync};
    if (nvram_storage_open_nvram(o->storage, &no, &err) < 0)
        return cli_fail(cli_exit_code(&err, err.code), "%s", err.msg);
    o->backend.tpm_version = o->tpm_version;
    o->backend.nvram = nvram_storage_nvram(o->storage);
    o->backend.debug_level = o->log_level;
    o->backend.debug_fd = o->log_fd;
    if (tpm_backend_init(&o->backend, &err) < 0)
        return cli_fail(CLI_EXIT_NOT_LOADABLE, "%s", err.msg);
    /* swtpm starts the TPM at once also when a startup command is asked for */
    if ((o->not_need_init || o->backend.startup != TPM_STARTUP_NONE) &&
        tpm_backend_start(false) != 0)
        return cli_fail(CLI_EXIT_NOT_LOADABLE, "%s: libtpms could not start the TPM from it",
                        nvram_storage_name(o->storage));
    o->server.storage = o->storage;
    return 0;
}

static int ready(void *opaque, struct nv_error *err)
{
    struct socket_opts *o = opaque;
    int pid_fd = -1;
    o->start_code = start_tpm(o);
    /* The NVRAM holds its data key and the blob keys are made: the keys as
     * read are no longer needed, and no copy of them stays. */
    if (o->sec) {
        nvram_key_wipe(&o->sec->key);
        nvram_key_wipe(&o->sec->migration_key);
    }
    if (o->start_code != 0)
        return nv_error_set(err, -ECANCELED, "the TPM did not start");
    if ((o->pid_file || o->pid_fd >= 0) && (o->start_code = open_pid(o, &pid_fd)) != 0)
        return nv_error_set(err, -ECANCELED, "the pid file cannot be written");
    if (o->daemon && daemon(1, 0) < 0) { /* the child keeps every descriptor, locks included */
        if (pid_fd >= 0)
            close(pid_fd);
        return nv_error_set(err, -errno, "--daemon: %s", strerror(errno));
    }
    if (o->daemon && o->sec) /* a fork's child does not inherit the parent's mlock */
        nv_secret_lock(o->sec, sizeof(*o->sec));
    if (pid_fd >= 0 && write_pid(o, pid_fd, err) < 0)
        return err->code;
    if (o->runas) {
        struct passwd *pw = getpwnam(o->runas);
        if (!pw || initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
            setuid(pw->pw_uid) < 0)
            return nv_error_set(err, -EPERM, "--runas %s: cannot become that user", o->runas);
    }
    return 0;
}

/* ---- the command ------------------------------------------------------------------------ */

/* The secrets' pages, made when the first key is given: without keys a TPM
 * process keeps no locked page for them. Returns 0 or an exit code. */
static int secrets(struct socket_opts *o)
{
    if (!o->sec && !(o->sec = nv_secret_alloc(sizeof(*o->sec))))
        return cli_fail(CLI_EXIT_ERROR, "socket: no memory for keys: %s", strerror(errno));
    return 0;
}

static int parse_args(int argc, char **argv, struct socket_opts *o)
{
    enum {
        O_TPMSTATE = 256,
        O_SERVER,
        O_CTRL,
        O_KEY,
        O_MIGKEY,
        O_PID,
        O_LOG,
        O_FLAGS,
        O_LOCALITY,
        O_MIGRATION,
        O_PLATFORM,
        O_NOSYNC,
        O_PRINTCAPS,
        O_PRINTSTATES,
        O_TPM2,
        O_SECCOMP,
        O_PORT,
        O_FD
    };
    static const struct option lo[] = {{"tpm2", no_argument, NULL, O_TPM2},
                                       {"tpmstate", required_argument, NULL, O_TPMSTATE},
                                       {"server", required_argument, NULL, O_SERVER},
                                       {"ctrl", required_argument, NULL, O_CTRL},
                                       {"key", required_argument, NULL, O_KEY},
                                       {"migration-key", required_argument, NULL, O_MIGKEY},
                                       {"pid", required_argument, NULL, O_PID},
                                       {"log", required_argument, NULL, O_LOG},
                                       {"flags", required_argument, NULL, O_FLAGS},
                                       {"locality", required_argument, NULL, O_LOCALITY},
                                       {"migration", required_argument, NULL, O_MIGRATION},
                                       {"platform", required_argument, NULL, O_PLATFORM},
                                       {"no-sync", no_argument, NULL, O_NOSYNC},
                                       {"seccomp", required_argument, NULL, O_SECCOMP},
                                       {"print-capabilities", no_argument, NULL, O_PRINTCAPS},
                                       {"print-states", no_argument, NULL, O_PRINTSTATES},
                                       {"port", required_argument, NULL, 'p'},
                                       {"fd", required_argument, NULL, 'f'},
                                       {"daemon", no_argument, NULL, 'd'},
                                       {"terminate", no_argument, NULL, 't'},
                                       {"runas", required_argument, NULL, 'r'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
    static const char *const flags_ok[] = {"not-need-init",
                                           "startup-clear",
                                           "startup-state",
                                           "startup-deactivated",
                                           "startup-none",
                                           "disable-auto-shutdown",
                                           NULL};
    static const char *const locality_ok[] = {"reject-locality-4", "allow-set-locality", NULL};
    static const char *const migration_ok[] = {"incoming", "release-lock-outgoing", NULL};
    int c, r = 0;
    bool have_state = false;
    optind = 1;
    opterr = 0;
    while (r == 0 && (c = getopt_long(argc, argv, "dtr:hp:f:", lo, NULL)) != -1) {
        char *arg = optarg ? copy_arg(o, optarg) : NULL;
        if (optarg && !arg) {
            r = cli_fail(CLI_EXIT_USAGE, "socket: too many options");
            break;
        }
        switch (c) {
        case O_TPM2:
            o->tpm_version = 2;
            break;
        case O_TPMSTATE:
            r = parse_tpmstate(arg, o);
            have_state = true;
            break;
        case O_SERVER:
            r = parse_channel("--server", arg, &o->server.data, false);
            break;
        case O_CTRL:
            r = parse_channel("--ctrl", arg, &o->server.ctrl, true);
            break;
        case O_KEY:
            r = o->have_key ? cli_fail(CLI_EXIT_USAGE, "socket: --key given twice")
                            : secrets(o) ?: cli_parse_key("--key", optarg, &o->sec->key);
            o->have_key = r == 0;
            break;
        case O_MIGKEY:
            r = o->have_migration_key
                    ? cli_fail(CLI_EXIT_USAGE, "socket: --migration-key given twice")
                    : secrets(o) ?: cli_parse_key("--migration-key", optarg,
                                                  &o->sec->migration_key);
            o->have_migration_key = r == 0;
            break;
        case O_PID:
        case O_LOG:
            r = parse_pid_or_log(c == O_PID ? "--pid" : "--log", arg, o);
            break;
        case O_FLAGS:
            r = parse_list("--flags", arg, flags_ok, o);
            break;
        case O_LOCALITY:
            r = parse_list("--locality", arg, locality_ok, o);
            break;
        case O_MIGRATION:
            r = parse_list("--migration", arg, migration_ok, o);
            break;
        case O_PLATFORM: {
            struct kv kv[2];
            static const char *const ok[] = {"port", NULL};
            uint64_t port = 0;
            int n = split_kv("--platform", arg, ok, kv, 2);
            r = n < 0    ? -n
                : n != 1 ? cli_fail(CLI_EXIT_USAGE, "socket: --platform port=P")
                         : parse_uint("--platform", &kv[0], 65535, &port);
            o->server.platform_port = (unsigned)port;
            break;
        }
        case O_NOSYNC:
            o->no_sync = true;
            break;
        case O_SECCOMP:
            break; /* accepted for swtpm's command lines; nvtpm installs no filter */
        case O_PRINTCAPS:
            o->print_caps = true;
            break;
        case O_PRINTSTATES:
            o->print_states = true;
            break;
        case 'p': /* swtpm's older spelling of --server type=tcp,port=P */
        case 'f': /* and of --server fd=N (a socket, or a character device) */
            r = parse_data_shorthand(c, arg, o);
            break;
        case 'd':
            o->daemon = true;
            break;
        case 't':
            o->server.terminate = true;
            break;
        case 'r':
            o->runas = optarg;
            break;
        case 'h':
            fputs(socket_usage, stdout);
            return -1;
        default:
            r = cli_usage_error("socket", argv[optind - 1]);
        }
    }
    if (r == 0 && optind < argc)
        r = cli_fail(CLI_EXIT_USAGE, "socket: unexpected argument '%s'", argv[optind]);
    /* swtpm's other way to name the state folder: the environment's TPM_PATH */
    const char *tpm_path = getenv("TPM_PATH");
    if (r == 0 && !have_state && tpm_path && *tpm_path) {
        char dir[4096 + 8];
        snprintf(dir, sizeof(dir), "dir=%s", tpm_path);
        char *arg = copy_arg(o, dir);
        r = arg ? parse_tpmstate(arg, o) : cli_fail(CLI_EXIT_ERROR, "socket: too many options");
        have_state = r == 0;
    }
    if (r == 0 && !o->print_caps && !have_state)
        r = cli_fail(CLI_EXIT_USAGE, "socket: --tpmstate (or TPM_PATH) is needed (see nvtpm "
                                     "socket --help)");
    if (r == 0 && !o->print_caps && !o->print_states && o->server.ctrl.type == TPM_CHANNEL_NONE &&
        o->server.data.type == TPM_CHANNEL_NONE)
        r = cli_fail(CLI_EXIT_USAGE, "socket: give --server, --ctrl or both");
    if (r == 0 && o->runas && !getpwnam(o->runas)) /* before anything is created */
        r = cli_fail(CLI_EXIT_USAGE, "socket: --runas %s: no such user", o->runas);
    return r;
}

/* --log file=, opened as swtpm opens it: never through a symbolic link (a
 * link planted where a root-run server logs would have it overwrite the
 * link's target: ELOOP, exit 1), mode 0600 (level 5 and above log every
 * command and response), appended to, or emptied first with truncate. A
 * file made here goes to --runas's user. */
static int open_log(struct socket_opts *o)
{
    int flags = O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC | (o->log_truncate ? O_TRUNC : 0);
    if (!o->log_file)
        return 0;
    o->log_fd = open(o->log_file, flags | O_CREAT | O_EXCL, 0600);
    if (o->log_fd >= 0)
        give_to_runas(o, o->log_fd, o->log_file); /* made here */
    else if (errno == EEXIST)
        o->log_fd = open(o->log_file, flags);
    if (o->log_fd < 0)
        return cli_fail(CLI_EXIT_USAGE, "--log: %s: %s", o->log_file, strerror(errno));
    return 0;
}

/* The keys of blobs in swtpm's format, made as swtpm makes them. */
static int derive_blob_keys(struct socket_opts *o)
{
    struct nv_error err = {0};
    struct socket_secrets *sec = o->sec;
    if ((o->have_key && mig_key_from(&sec->key, &sec->key_aes, &err) < 0) ||
        (o->have_migration_key &&
         mig_key_from(&sec->migration_key, &sec->migration_key_aes, &err) < 0))
        return cli_fail(CLI_EXIT_ERROR, "socket: %s", err.msg);
    return 0;
}

/* dir=: take the folder's lock as swtpm does and decide what it serves. */
static int prepare_dir(struct socket_opts *o)
{
    struct nv_error err = {0};
    bool made = false;
    int r = mig_dir_lock(o->state_dir, o->state_mode ? o->state_mode : 0640, &o->dir_lock_fd, &made,
                         &err);
    /* a migration's destination on shared storage: the source holds .lock; the
     * image's ownership hands over as for file= */
    if (r == -EBUSY && o->incoming)
        r = 0;
    else if (r < 0)
        return cli_fail(r == -EBUSY ? CLI_EXIT_BUSY : CLI_EXIT_ERROR, "%s", err.msg);
    if (made)
        give_to_runas(o, o->dir_lock_fd, ".lock");
    return cli_dir_inspect(o->state_dir, o->state_path, o->tpm_version, &o->dir_state,
                           &o->dir_files);
}

/* Hold the state's locks (a second server is refused before it makes a
 * socket), open the sockets, start the TPM (start_tpm, through ready), serve. */
static int serve(struct socket_opts *o)
{
    struct nv_error err = {0};
    int code = 0;
    /* Stopping signals stay blocked after the server's loop has taken them
     * (it restores the mask it found): one that comes while the process ends
     * must not kill it before the pid file is removed. */
    sigset_t stops;
    sigemptyset(&stops);
    sigaddset(&stops, SIGTERM);
    sigaddset(&stops, SIGINT);
    sigaddset(&stops, SIGHUP);
    sigprocmask(SIG_BLOCK, &stops, NULL);
    fdstash_init(&o->stash);
    if (o->state_dir)
        code = prepare_dir(o);
    if (code == 0 && o->dir_state != CLI_DIR_SWTPM)
        o->storage = open_state(o, &code);
    if (code == 0) {
        o->server.file_key = o->have_key;
        o->server.state_key = o->have_key ? &o->sec->key_aes : NULL;
        o->server.migration_key = o->have_migration_key ? &o->sec->migration_key_aes : NULL;
        o->server.log_level = o->log_level;
        o->server.log_fd = o->log_fd;
        o->server.log_prefix = o->log_prefix;
        o->server.ready = ready;
        o->server.ready_opaque = o;
        if (tpm_server_run(&o->server, &err) < 0)
            code = o->start_code ? o->start_code
                                 : cli_fail(cli_exit_code(&err, err.code), "%s", err.msg);
    }
    nvram_storage_close(o->storage);
    fdstash_cleanup(&o->stash);
    if (o->dir_lock_fd >= 0)
        close(o->dir_lock_fd);
    return code;
}

int cmd_socket(int argc, char **argv)
{
    struct socket_opts o = {
        .tpm_version = 1, .state_fd = -1, .pid_fd = -1, .log_fd = 2, .dir_lock_fd = -1};
    o.server.data.fd = o.server.ctrl.fd = -1;
    int r = parse_args(argc, argv, &o);
    if (r == 0 && o.print_caps)
        r = print_capabilities(o.tpm_version);
    else if (r == 0 && o.print_states)
        r = o.state_path ? print_states(&o)
                         : cli_fail(CLI_EXIT_USAGE, "socket: --print-states needs file= or dir=");
    else if (r == 0 && (r = derive_blob_keys(&o)) == 0 && (r = open_log(&o)) == 0)
        r = serve(&o);
    struct stat pid_st; /* still the file written, not one put there since */
    if (o.pid_written && lstat(o.pid_written, &pid_st) == 0 && pid_st.st_dev == o.pid_dev &&
        pid_st.st_ino == o.pid_ino)
        unlink(o.pid_written);
    free(o.pid_written);
    free(o.state_buf);
    nv_secret_free(o.sec, sizeof(*o.sec));
    for (int i = 0; i < o.ncopies; i++)
        free(o.copies[i]);
    return r < 0 ? 0 : r;
}
