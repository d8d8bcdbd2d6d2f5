/* A program that loads a plugin after it started, as a daemon loads its modules on first use.
 *
 * Started from the live tree (DST/c/prog MODE), it sleeps, then dlopen()s the plugin of its
 * own release and checks that the plugin says so. MODE says how it finds the plugin:
 *   exe       the directory of readlink("/proc/self/exe"), read at start (the real path of
 *             the executable, as the kernel resolved it at exec)
 *   exe-late  the same, read after the sleep (under an exchange the kernel names where the
 *             old tree went: the generation in DST's home)
 *   argv0     the directory of argv[0], as given (DST/c/...)
 *   origin    dlopen("libplugin.so") through the RUNPATH $ORIGIN/plugin, which ld.so expanded
 *             at exec
 *   where     prints the directories the exe and argv0 modes would use, and exits
 * Exit 0 when the plugin is of its release; 1 with one line on stderr otherwise.
 * Built by scripts/program-starts with -DRELEASE='"A"' (or "B") and -DSLEEP_MS=N. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int exe_dir(char *out, size_t len)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n < 0) {
        perror("readlink /proc/self/exe");
        return -1;
    }
    exe[n] = '\0';
    snprintf(out, len, "%s", dirname(exe));
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "exe";
    char dir[PATH_MAX] = "", path[PATH_MAX + 32];

    if (strcmp(mode, "exe") == 0) {
        if (exe_dir(dir, sizeof dir) < 0)
            return 1;
    } else if (strcmp(mode, "argv0") == 0) {
        char a0[PATH_MAX];
        snprintf(a0, sizeof a0, "%s", argv[0]);
        snprintf(dir, sizeof dir, "%s", dirname(a0));
    } else if (strcmp(mode, "where") == 0) {
        char a0[PATH_MAX];
        if (exe_dir(dir, sizeof dir) < 0)
            return 1;
        snprintf(a0, sizeof a0, "%s", argv[0]);
        printf("exe %s\nargv0 %s\n", dir, dirname(a0));
        return 0;
    } else if (strcmp(mode, "exe-late") != 0 && strcmp(mode, "origin") != 0) {
        fprintf(stderr, "prog: unknown mode %s\n", mode);
        return 2;
    }

    struct timespec ts = {SLEEP_MS / 1000, (SLEEP_MS % 1000) * 1000000L};
    nanosleep(&ts, NULL);

    if (strcmp(mode, "exe-late") == 0 && exe_dir(dir, sizeof dir) < 0)
        return 1;
    if (strcmp(mode, "origin") == 0)
        snprintf(path, sizeof path, "libplugin.so");
    else
        snprintf(path, sizeof path, "%s/plugin/libplugin.so", dir);

    void *h = dlopen(path, RTLD_NOW);
    if (!h) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 1;
    }
    const char *(*release)(void) = (const char *(*)(void))dlsym(h, "plugin_release");
    if (!release) {
        fprintf(stderr, "dlsym plugin_release: %s\n", dlerror());
        return 1;
    }
    if (strcmp(release(), RELEASE) != 0) {
        fprintf(stderr, "release mismatch: plugin is %s, program %s\n", release(), RELEASE);
        return 1;
    }
    return 0;
}
