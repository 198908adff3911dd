/* SPDX-License-Identifier: MIT */
/*
 * lorad-manpage: a manual page from its template with the option table in
 * it, at build time (docs/man/CMakeLists.txt), so that lorad(8)'s OPTIONS
 * and lorad.conf(5)'s keys are what `lorad --help` and the config parser
 * take, and cannot drift from them:
 *
 *   lorad-manpage TEMPLATE OUT
 *
 * Copies TEMPLATE to OUT; a line `.\" lorad-options cli` becomes
 * opt_print_man(OPT_MAN_CLI), `.\" lorad-options conf` OPT_MAN_CONF. A
 * template without such a line is refused. Not installed.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "options.h"

int main(int argc, char **argv)
{
	FILE *in, *out;
	char line[4096];
	int marks = 0, ret = 1;

	if (argc != 3) {
		fprintf(stderr, "usage: lorad-manpage TEMPLATE OUT\n");
		return 2;
	}
	in = fopen(argv[1], "r");
	if (!in) {
		fprintf(stderr, "lorad-manpage: %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	out = fopen(argv[2], "w");
	if (!out) {
		fprintf(stderr, "lorad-manpage: %s: %s\n", argv[2], strerror(errno));
		fclose(in);
		return 1;
	}
	while (fgets(line, sizeof(line), in)) {
		if (!strcmp(line, ".\\\" lorad-options cli\n")) {
			opt_print_man(out, OPT_MAN_CLI);
			marks++;
		} else if (!strcmp(line, ".\\\" lorad-options conf\n")) {
			opt_print_man(out, OPT_MAN_CONF);
			marks++;
		} else {
			fputs(line, out);
		}
	}
	if (ferror(in))
		fprintf(stderr, "lorad-manpage: %s: read error\n", argv[1]);
	else if (!marks)
		fprintf(stderr, "lorad-manpage: %s: no '.\\\" lorad-options' line\n", argv[1]);
	else
		ret = 0;
	fclose(in);
	if (fclose(out) || ret) {
		if (!ret)
			fprintf(stderr, "lorad-manpage: %s: %s\n", argv[2], strerror(errno));
		remove(argv[2]);
		return 1;
	}
	return 0;
}
