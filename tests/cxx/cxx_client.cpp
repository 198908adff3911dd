// SPDX-License-Identifier: MIT
// A C++ client of lorad: the public headers must compile as C++ (g++ and
// clang++, -std=c++11 and later, -Wall -Wextra -pedantic -Werror) and the
// library must be usable from it. Run against a daemon:
//
//   cxx_client SOCKET      one request of 8 tokens; exit 0 when it completed
#include <lorad/lorad.h>

#include <cstdio>
#include <cstring>
#include <vector>

int main(int argc, char **argv)
{
	if (argc != 2) {
		std::fprintf(stderr, "usage: %s SOCKET\n", argv[0]);
		return 2;
	}
	struct lorad *c = nullptr;
	int ret = lorad_connect(argv[1], nullptr, &c);
	if (ret) {
		std::fprintf(stderr, "connect: %s\n", lorad_strerror(ret));
		return 1;
	}
	const uint32_t prompt[] = { 1, 2, 3 };
	std::vector<uint32_t> out(8);
	const char key[] = "alice";
	struct lorad_request req;
	std::memset(&req, 0, sizeof(req));
	req.user_data = 7;
	req.prompt = prompt;
	req.n_prompt = 3;
	req.max_tokens = 8;
	req.out = out.data();
	req.routing_key_bytes = key;
	req.routing_key_len = sizeof(key) - 1;
	struct lorad_event ev;
	ret = lorad_generate(c, &req, &ev, 10000);
	lorad_close(c);
	if (ret || ev.res || ev.n_tokens != 8) {
		std::fprintf(stderr, "generate: %s / %s, %u tokens\n", lorad_strerror(ret),
			     lorad_strerror(ev.res), ev.n_tokens);
		return 1;
	}
	std::printf("8 tokens, skill '%s', version '%s'\n", ev.skill, ev.version_id);
	return 0;
}
