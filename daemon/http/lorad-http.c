/* SPDX-License-Identifier: MIT */
/*
 * lorad-http: an OpenAI-compatible HTTP gateway to a lorad daemon
 * (gateway.h). Listens on loopback unless told otherwise, and then only
 * with a bearer token.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <fcntl.h>

#include <arpa/inet.h>

#include "gateway.h"

static const char usage_text[] =
	"usage: lorad-http [OPTIONS]\n"
	"\n"
	"An OpenAI-compatible HTTP gateway to a lorad daemon:\n"
	"  POST /v1/completions, POST /v1/chat/completions, GET /v1/models,\n"
	"  GET /metrics, GET /healthz\n"
	"  A chat has 1-1024 messages, each content a string or 1-64 text parts, the\n"
	"  body within --max-body; it needs the admin socket (the model's chat format).\n"
	"\n"
	"  --listen ADDR:PORT        where to listen (default 127.0.0.1:8080; [::1]:8080 for IPv6).\n"
	"                            Anything but loopback needs --token-file.\n"
	"  --socket PATH             the daemon's client socket (default /run/lorad/lorad.sock)\n"
	"  --admin-socket PATH       its admin socket, for /v1/models, /metrics and chats\n"
	"                            (default /run/lorad/admin.sock; \"\" for none)\n"
	"  --token-file PATH         a file holding the bearer token every request but\n"
	"                            /healthz must carry (not readable by others)\n"
	"  --max-connections N       HTTP connections at once, 1-4096 (default 64); each holds\n"
	"                            one connection to the daemon while it lives\n"
	"  --timeout S               an idle HTTP connection is closed after S seconds,\n"
	"                            and so is one whose request has not arrived in\n"
	"                            full S seconds after it began, 1-3600 (default 30)\n"
	"  --max-body BYTES          the largest request body, 1 KiB-64 MiB (default 1 MiB)\n"
	"  --max-tokens N            the largest max_tokens taken, 1-1048576 (default 4096);\n"
	"                            a chat without max_tokens runs to its turn's end within it\n"
	"  --request-timeout S       a completion running longer is cancelled, 1-86400 (default 600)\n"
	"  -h, --help\n";

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int number(const char *opt, const char *s, unsigned long lo, unsigned long hi,
		  unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || end == s || *end || *s == '-' || *out < lo || *out > hi) {
		fprintf(stderr, "lorad-http: %s %s: a number from %lu to %lu\n", opt, s, lo, hi);
		return -1;
	}
	return 0;
}

/* ADDR:PORT or [ADDR]:PORT into @addr (numeric) and @port: 0; -1 no numeric
 * address (not said yet); -2 a bad port (said). */
static int parse_listen(const char *s, char *addr, size_t alen, unsigned long *port)
{
	const char *colon = strrchr(s, ':');
	size_t l;

	if (!colon)
		return -1;
	l = (size_t)(colon - s);
	if (l >= 2 && s[0] == '[' && s[l - 1] == ']') {
		s++;
		l -= 2;
	}
	if (!l || l >= alen)
		return -1;
	memcpy(addr, s, l);
	addr[l] = 0;
	{
		/* numeric: a name such as localhost would be looked up (and
		 * was then called "not loopback") */
		unsigned char a[sizeof(struct in6_addr)];

		if (inet_pton(AF_INET, addr, a) != 1 && inet_pton(AF_INET6, addr, a) != 1)
			return -1;
	}
	/* the port's fault is said by number(), once */
	return number("--listen", colon + 1, 1, 65535, port) ? -2 : 0;
}

static int loopback(const char *addr)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (inet_pton(AF_INET, addr, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, addr, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return 0;
}

/* The token: the file's first line, 16-511 bytes of printable ASCII. */
static int read_token(const char *path, char *tok, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat st;
	ssize_t n;
	size_t l;

	if (fd < 0 || fstat(fd, &st) < 0) {
		fprintf(stderr, "lorad-http: --token-file %s: %s\n", path, strerror(errno));
		goto err;
	}
	if (!S_ISREG(st.st_mode) || (st.st_mode & 0077)) {
		fprintf(stderr, "lorad-http: --token-file %s: must be a regular file that only its "
			"owner can read (chmod 600)\n", path);
		goto err;
	}
	n = read(fd, tok, cap - 1);
	close(fd);
	if (n < 0)
		return -1;
	tok[n] = 0;
	l = strcspn(tok, "\r\n");
	tok[l] = 0;
	for (size_t i = 0; i < l; i++)
		if (tok[i] <= ' ' || tok[i] > '~')
			l = 0;
	if (l < 16 || l >= cap - 1) {
		fprintf(stderr, "lorad-http: --token-file %s: the token must be 16 to %zu printable "
			"characters on the first line\n", path, cap - 2);
		return -1;
	}
	return 0;
err:
	if (fd >= 0)
		close(fd);
	return -1;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "socket", required_argument, NULL, 's' },
		{ "admin-socket", required_argument, NULL, 'a' },
		{ "token-file", required_argument, NULL, 't' },
		{ "max-connections", required_argument, NULL, 'c' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "max-body", required_argument, NULL, 'b' },
		{ "max-tokens", required_argument, NULL, 'm' },
		{ "request-timeout", required_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 } };
	struct gateway_opts o = {
		.socket = "/run/lorad/lorad.sock", .admin_socket = "/run/lorad/admin.sock",
		.max_connections = 64, .timeout_s = 30, .max_body = 1u << 20, .max_tokens = 4096,
		.request_timeout_s = 600,
	};
	char addr[64] = "127.0.0.1", token[512], err[300];
	const char *listen_arg = "127.0.0.1:8080", *token_file = NULL;
	unsigned long port = 8080, v;
	struct gateway *g;
	struct sigaction sa = { .sa_handler = on_signal };
	int c, ret;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'l': listen_arg = optarg; break;
		case 's': o.socket = optarg; break;
		case 'a': o.admin_socket = *optarg ? optarg : NULL; break;
		case 't': token_file = optarg; break;
		case 'c':
			if (number("--max-connections", optarg, 1, 4096, &v))
				return 2;
			o.max_connections = (unsigned)v;
			break;
		case 'T':
			if (number("--timeout", optarg, 1, 3600, &v))
				return 2;
			o.timeout_s = (unsigned)v;
			break;
		case 'b':
			if (number("--max-body", optarg, 1024, 64u << 20, &v))
				return 2;
			o.max_body = (uint32_t)v;
			break;
		case 'm':
			if (number("--max-tokens", optarg, 1, 1u << 20, &v))
				return 2;
			o.max_tokens = (uint32_t)v;
			break;
		case 'r':
			if (number("--request-timeout", optarg, 1, 86400, &v))
				return 2;
			o.request_timeout_s = (uint32_t)v;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		default:
			fputs(usage_text, stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lorad-http: unexpected argument %s\n", argv[optind]);
		return 2;
	}
	ret = parse_listen(listen_arg, addr, sizeof(addr), &port);
	if (ret == -1)
		fprintf(stderr, "lorad-http: --listen %s: ADDR:PORT with a numeric address "
			"(127.0.0.1:8080, [::1]:8080), not a name\n", listen_arg);
	if (ret)
		return 2;
	if (token_file) {
		if (read_token(token_file, token, sizeof(token)))
			return 2;
		o.token = token;
	} else if (!loopback(addr)) {
		fprintf(stderr, "lorad-http: --listen %s is not loopback: give --token-file\n", listen_arg);
		return 2;
	}
	o.listen_addr = addr;
	o.port = (uint16_t)port;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (gateway_start(&o, &g, err, sizeof(err)) < 0) {
		fprintf(stderr, "lorad-http: %s\n", err);
		return 1;
	}
	fprintf(stderr, "lorad-http: listening on %s port %lu, daemon %s%s\n", addr, port, o.socket,
		o.token ? ", bearer token required" : "");
	while (!stop)
		pause();
	fprintf(stderr, "lorad-http: stopping\n");
	gateway_stop(g);
	return 0;
}
