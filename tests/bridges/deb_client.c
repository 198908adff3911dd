/* SPDX-License-Identifier: MIT */
/*
 * A user's program built against the packaged liblorad-dev (pkg-config
 * lorad): one request to the packaged daemon (null engine), and the
 * prompt count of liblorad 2.2 in its final event.
 *   deb_client SOCKET
 */
#include <stdio.h>
#include <string.h>

#include <lorad/lorad.h>

int main(int argc, char **argv)
{
	uint32_t prompt[5] = { 1, 2, 3, 4, 5 }, out[8];
	struct lorad_request r = { .user_data = 42, .prompt = prompt, .n_prompt = 5,
				   .max_tokens = 8, .out = out };
	struct lorad_connect_opts o = { .timeout_ms = 10000 };
	struct lorad_event ev;
	struct lorad *c;
	int ret;

	if (argc != 2)
		return 2;
	ret = lorad_connect(argv[1], &o, &c);
	if (ret) {
		fprintf(stderr, "connect: %s\n", lorad_strerror(ret));
		return 1;
	}
	ret = lorad_submit(c, &r);
	do
		ret = ret < 0 ? ret : lorad_wait(c, &ev, 1, 5000);
	while (ret >= 0 && !(ev.flags & LORAD_EV_FINAL));
	lorad_close(c);
	if (ret < 0 || ev.res) {
		fprintf(stderr, "request: %s\n", lorad_strerror(ret < 0 ? ret : ev.res));
		return 1;
	}
	printf("tokens %u prompt %u flag %d\n", ev.n_tokens, ev.n_prompt, !!(ev.flags & LORAD_EV_PROMPT));
	return ev.n_tokens > 0 && ev.n_prompt == 5 && (ev.flags & LORAD_EV_PROMPT) ? 0 : 1;
}
