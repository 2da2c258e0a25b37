// A PKCS#11 module for tests that forwards every call to a real module
// (SoftHSM2) and, on command, makes the token fail or slow down underneath
// a running broker. It is the one sanctioned stand-in: the keys, the
// sessions and every signature still come from the real module.
//
// FAULT_PKCS11_REAL    path of the real module
// FAULT_PKCS11_CONTROL path of a file read before every intercepted call:
//   ok          forward everything (also when the file is missing or empty)
//   fail        signing, opening sessions, logging in and finding objects
//               return CKR_DEVICE_ERROR: the token is gone
//   delay MS    every signature waits MS milliseconds, then goes through
//
// Build: cc -shared -fPIC -I<dir of pkcs11.h> -o libfault.so fault.c -ldl
#define CK_PTR *
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType (*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType (*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#include "pkcs11.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST wrapped;
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;

enum mode { MODE_OK, MODE_FAIL, MODE_DELAY };

// control reads the control file; *ms gets the delay.
static enum mode control(long *ms) {
	const char *path = getenv("FAULT_PKCS11_CONTROL");
	char buf[64] = {0};
	*ms = 0;
	if (path == NULL) return MODE_OK;
	FILE *f = fopen(path, "r");
	if (f == NULL) return MODE_OK;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	if (strncmp(buf, "fail", 4) == 0) return MODE_FAIL;
	if (strncmp(buf, "delay", 5) == 0) {
		*ms = strtol(buf + 5, NULL, 10);
		return MODE_DELAY;
	}
	return MODE_OK;
}

static void sleep_ms(long ms) {
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0) {
	}
}

// gate applies the mode to a call; it returns CKR_OK to go on.
static CK_RV gate(int signs) {
	long ms;
	switch (control(&ms)) {
	case MODE_FAIL:
		return CKR_DEVICE_ERROR;
	case MODE_DELAY:
		if (signs) sleep_ms(ms);
		return CKR_OK;
	default:
		return CKR_OK;
	}
}

static CK_RV f_SignInit(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k) {
	CK_RV rv = gate(0);
	return rv != CKR_OK ? rv : real->C_SignInit(s, m, k);
}

static CK_RV f_Sign(CK_SESSION_HANDLE s, CK_BYTE_PTR d, CK_ULONG dl, CK_BYTE_PTR sig, CK_ULONG_PTR sl) {
	// Only a call that makes a signature waits, not the length query.
	CK_RV rv = gate(sig != NULL);
	if (rv != CKR_OK) {
		// A failed C_Sign ends the operation, as the standard says.
		CK_ULONG n = 0;
		real->C_Sign(s, d, dl, NULL, &n);
		CK_BYTE *tmp = malloc(n ? n : 1);
		real->C_Sign(s, d, dl, tmp, &n);
		free(tmp);
		return rv;
	}
	return real->C_Sign(s, d, dl, sig, sl);
}

static CK_RV f_OpenSession(CK_SLOT_ID id, CK_FLAGS fl, CK_VOID_PTR app, CK_NOTIFY n, CK_SESSION_HANDLE_PTR s) {
	CK_RV rv = gate(0);
	return rv != CKR_OK ? rv : real->C_OpenSession(id, fl, app, n, s);
}

static CK_RV f_Login(CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG len) {
	CK_RV rv = gate(0);
	return rv != CKR_OK ? rv : real->C_Login(s, u, pin, len);
}

static CK_RV f_FindObjectsInit(CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n) {
	CK_RV rv = gate(0);
	return rv != CKR_OK ? rv : real->C_FindObjectsInit(s, t, n);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR out) {
	if (out == NULL) return CKR_ARGUMENTS_BAD;
	pthread_mutex_lock(&load_mu);
	if (real == NULL) {
		const char *path = getenv("FAULT_PKCS11_REAL");
		void *h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
		CK_C_GetFunctionList get = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
		if (get == NULL || get(&real) != CKR_OK) {
			real = NULL;
			pthread_mutex_unlock(&load_mu);
			return CKR_GENERAL_ERROR;
		}
		wrapped = *real;
		wrapped.C_SignInit = f_SignInit;
		wrapped.C_Sign = f_Sign;
		wrapped.C_OpenSession = f_OpenSession;
		wrapped.C_Login = f_Login;
		wrapped.C_FindObjectsInit = f_FindObjectsInit;
	}
	pthread_mutex_unlock(&load_mu);
	*out = &wrapped;
	return CKR_OK;
}
