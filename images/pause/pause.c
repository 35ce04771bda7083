/* The pod sandbox's first process: holds the pod's namespaces, does nothing else.
 * Sleeps until SIGTERM or SIGINT (then exits 0) and reaps any child that ends up
 * re-parented to it (it is PID 1 of the pod when the pod shares its PID namespace).
 * Built static (gcc -static), so the image needs nothing but this file. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0 ||
                   strcmp(argv[1], "--help") == 0)) {
    puts("pause (mlops-operator): sleeps until SIGTERM or SIGINT, reaps children");
    return 0;
  }
  struct sigaction stop = {0};
  stop.sa_handler = on_stop;
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0) return 1;
  struct sigaction child = {0};
  child.sa_handler = on_child;
  child.sa_flags = SA_NOCLDSTOP;
  if (sigaction(SIGCHLD, &child, NULL) < 0) return 2;
  for (;;) pause();
}
