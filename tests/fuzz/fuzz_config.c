/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: bytes as the config file (INI, inih) -> config_load() over
 * the defaults, as lorad starts; when it loads, what the start does next
 * (default access, absolute adapter paths, the check) and then a reload: the
 * same file loaded again over a deep copy of the running config, as SIGHUP
 * does. A refused file must say why ("FILE:LINE: ..."); nothing may leak.
 *
 * The reload must also accept a file that loaded and checked at start, and
 * give the same adapters, routes and rules (it once appended the file's
 * [route] targets and [classify] rules to the running ones).
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"

#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static char path[512];
/* large (adapter and route tables): not on the stack */
static struct config cfg, next;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[1024] = "";
	int ret;

	if (!path[0]) {
		log_set_level(getenv("LORAD_FUZZ_LOG") ? LOG_PRI_DEBUG : 0);
		snprintf(path, sizeof(path), "%s/lorad.conf", fuzz_tmpdir("config"));
	}
	fuzz_write_file(path, data, size);
	config_defaults(&cfg);
	ret = config_load(&cfg, path, err, sizeof(err));
	if (ret) {
		CHECK(ret < 0 && err[0]);
		config_free(&cfg);
		return 0;
	}
	config_default_access(&cfg);
	CHECK(cfg.n_allow_uid + cfg.n_allow_gid > 0);
	if (config_absolute_paths(&cfg, err, sizeof(err)) == 0) {
		for (unsigned i = 0; i < cfg.n_adapters; i++)
			CHECK(cfg.adapter[i].path && cfg.adapter[i].path[0] == '/');
	}
	bool checked = config_check(&cfg, err, sizeof(err)) == 0;

	/* SIGHUP: parse into a copy; only a config that loads replaces the running one */
	if (config_copy(&next, &cfg) == 0) {
		config_forget_file_lists(&next);   /* as reload() does */
		err[0] = 0;
		ret = config_load(&next, path, err, sizeof(err));
		CHECK(ret == 0 || err[0]);
		if (checked) {
			/* the same file: the same config */
			CHECK(ret == 0);
			CHECK(next.n_adapters == cfg.n_adapters && next.n_routes == cfg.n_routes);
			CHECK(next.n_classify == cfg.n_classify);
			for (unsigned i = 0; i < cfg.n_routes; i++)
				CHECK(next.route[i].n == cfg.route[i].n);
		}
		config_free(&next);
	}
	config_free(&cfg);
	return 0;
}
