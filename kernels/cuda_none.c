/*
 * cuda_none.c — be_cuda_create of a lorad built without the CUDA toolkit.
 */
#include "backend.h"

#include <errno.h>
#include <stdio.h>

int be_cuda_create(const struct be_cuda_opts *opts, struct be **out, char *why, size_t whylen)
{
	(void)opts;
	(void)out;
	snprintf(why, whylen, "this lorad was built without the CUDA toolkit");
	return -ENOTSUP;
}
