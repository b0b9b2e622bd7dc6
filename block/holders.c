/* holders.c - who holds locks on an image: /proc/PID/fdinfo/FD lists the
 * locks of each open file description (/proc/locks shows -1 as the pid of
 * OFD locks), so scanning it names the processes, for messages and
 * `nvtpm info`. Best effort: processes we may not inspect are not seen. */
#include "internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* Record one "lock:" line of an fdinfo file if it is on our inode. */
static void parse_lock_line(const char *line, const char *dev_ino, struct bdrv_lock_holder *h)
{
    char kind[16], mode[16], id[64];
    long long start, end;
    /* lock:	1: OFDLCK ADVISORY  READ -1 fe:00:10952911 100 101 */
    if (sscanf(line, "lock: %*d: %15s %*s %15s %*d %63s %lld %lld", kind, mode, id, &start, &end) !=
            5 ||
        strcmp(id, dev_ino) != 0)
        return;
    for (long long b = start; b <= end && b < 300 + 1; b++) {
        if (b >= 100 && b < 105)
            h->qemu_perm |= 1u << (b - 100);
        else if (b >= 200 && b < 205)
            h->qemu_unshare |= 1u << (b - 200);
        else if (b == BDRV_ACCESS_LOCK_BYTE)
            h->access = strcmp(mode, "WRITE") == 0 ? 2 : 1;
    }
}

static void scan_process(pid_t pid, const char *dev_ino, struct bdrv_lock_holder *h)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fdinfo", (int)pid);
    DIR *d = opendir(path);
    for (struct dirent *e; d && (e = readdir(d));) {
        char file[384], line[256];
        if (e->d_name[0] == '.')
            continue;
        snprintf(file, sizeof(file), "%s/%s", path, e->d_name);
        FILE *f = fopen(file, "re");
        while (f && fgets(line, sizeof(line), f))
            if (strncmp(line, "lock:", 5) == 0)
                parse_lock_line(line, dev_ino, h);
        if (f)
            fclose(f);
    }
    if (d)
        closedir(d);
}

int bdrv_lock_holders(struct bdrv_node *bs, struct bdrv_lock_holder *out, size_t max, size_t *count,
                      struct nv_error *err)
{
    struct stat st;
    int fd = bdrv_leaf(bs)->drv->lock_fd(bdrv_leaf(bs));
    *count = 0;
    if (fstat(fd, &st) < 0)
        return nv_error_set(err, -errno, "%s: %s", bs->filename, strerror(errno));
    char dev_ino[64];
    snprintf(dev_ino, sizeof(dev_ino), "%02x:%02x:%lu", major(st.st_dev), minor(st.st_dev),
             (unsigned long)st.st_ino);
    DIR *proc = opendir("/proc");
    if (!proc)
        return nv_error_set(err, -errno, "/proc: %s", strerror(errno));
    for (struct dirent *e; (e = readdir(proc)) && *count < max;) {
        if (!isdigit((unsigned char)e->d_name[0]))
            continue;
        struct bdrv_lock_holder h = {.pid = (pid_t)atoi(e->d_name)};
        scan_process(h.pid, dev_ino, &h);
        if (!h.qemu_perm && !h.qemu_unshare && !h.access)
            continue;
        char comm_path[64];
        snprintf(comm_path, sizeof(comm_path), "/proc/%d/comm", (int)h.pid);
        FILE *f = fopen(comm_path, "re");
        if (!f || !fgets(h.name, sizeof(h.name), f))
            snprintf(h.name, sizeof(h.name), "?");
        if (f)
            fclose(f);
        h.name[strcspn(h.name, "\n")] = '\0';
        h.self = h.pid == getpid();
        out[(*count)++] = h;
    }
    closedir(proc);
    return 0;
}
