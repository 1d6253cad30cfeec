/* Run an mcc artifact's lib.so with the TVM runtime alone, through TVM FFI's C ABI.
 *
 *   run_artifact LIB.so CONSTANTS.params N_CONSTANTS INPUTS.params N_INPUTS OUTPUTS.params
 *
 * Calls main(i0, ..., c0, ...) of the Relax VM in LIB.so, with the tensors named i0.. in
 * INPUTS.params and c0.. in CONSTANTS.params (TVM's parameter format, as mcc saves constants),
 * and writes the outputs as o0, o1, ... to OUTPUTS.params. C, not C++, so that Debian's
 * gcc-aarch64-linux-gnu alone builds it for aarch64, where the tests run it under qemu-user
 * against the aarch64 libtvm_runtime.so and libtvm_ffi.so of the apache-tvm wheels.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tvm/ffi/c_api.h>

static void fail(const char* what) {
  TVMFFIObjectHandle err = NULL;
  TVMFFIErrorMoveFromRaised(&err);
  if (err != NULL) {
    TVMFFIErrorCell* cell = (TVMFFIErrorCell*)((char*)err + sizeof(TVMFFIObject));
    fprintf(stderr, "%s: %.*s: %.*s\n", what, (int)cell->kind.size, cell->kind.data,
            (int)cell->message.size, cell->message.data);
  } else {
    fprintf(stderr, "%s failed\n", what);
  }
  exit(1);
}

static TVMFFIObjectHandle global(const char* name) {
  TVMFFIByteArray bytes = {name, strlen(name)};
  TVMFFIObjectHandle f = NULL;
  if (TVMFFIFunctionGetGlobal(&bytes, &f) != 0 || f == NULL) fail(name);
  return f;
}

static TVMFFIAny call(TVMFFIObjectHandle f, TVMFFIAny* args, int n, const char* what) {
  TVMFFIAny result;
  memset(&result, 0, sizeof(result));
  result.type_index = kTVMFFINone;
  if (TVMFFIFunctionCall(f, args, n, &result) != 0) fail(what);
  return result;
}

static TVMFFIAny str(const char* s) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}

static TVMFFIAny integer(int64_t v) {
  TVMFFIAny a;
  memset(&a, 0, sizeof(a));
  a.type_index = kTVMFFIInt;
  a.v_int64 = v;
  return a;
}

/* A function or module's member function: ffi.ModuleGetFunction(module, name, query_imports). */
static TVMFFIObjectHandle member(TVMFFIAny module, const char* name) {
  TVMFFIAny args[3] = {module, str(name), integer(1)};
  args[2].type_index = kTVMFFIBool;
  TVMFFIAny f = call(global("ffi.ModuleGetFunction"), args, 3, name);
  if (f.type_index != kTVMFFIFunction) {
    fprintf(stderr, "no function %s in the module\n", name);
    exit(1);
  }
  return f.v_obj;
}

/* Tensors i0.., c0.. from a parameter map, as call arguments. */
static void take(TVMFFIAny params, const char* prefix, int count, TVMFFIAny* out) {
  TVMFFIObjectHandle get = global("ffi.MapGetItem");
  char key[32];
  for (int i = 0; i < count; ++i) {
    snprintf(key, sizeof(key), "%s%d", prefix, i);
    TVMFFIAny args[2] = {params, str(key)};
    out[i] = call(get, args, 2, key);
  }
}

int main(int argc, char** argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: %s LIB.so CONSTANTS.params N_CONSTANTS INPUTS.params N_INPUTS "
                    "OUTPUTS.params\n", argv[0]);
    return 2;
  }
  int n_constants = atoi(argv[3]), n_inputs = atoi(argv[5]);
  TVMFFIAny path = str(argv[1]);
  TVMFFIAny lib = call(global("ffi.ModuleLoadFromFile"), &path, 1, "loading the library");
  TVMFFIAny vm = call(member(lib, "vm_load_executable"), NULL, 0, "vm_load_executable");
  /* device type 1 (CPU), device 0, the pooled allocator (2): what Python's VirtualMachine does */
  TVMFFIAny init[3] = {integer(1), integer(0), integer(2)};
  call(member(vm, "vm_initialization"), init, 3, "vm_initialization");

  TVMFFIObjectHandle load = global("runtime.LoadParamsFromFile");
  TVMFFIAny constants_path = str(argv[2]), inputs_path = str(argv[4]);
  TVMFFIAny constants = call(load, &constants_path, 1, "loading the constants");
  TVMFFIAny inputs = call(load, &inputs_path, 1, "loading the inputs");
  TVMFFIAny* args = calloc(n_inputs + n_constants, sizeof(TVMFFIAny));
  take(inputs, "i", n_inputs, args);
  take(constants, "c", n_constants, args + n_inputs);
  TVMFFIAny result = call(member(vm, "main"), args, n_inputs + n_constants, "main");

  /* One output is a Tensor, several an Array of them: save {o0: ..., o1: ...}. */
  TVMFFIAny pairs[64];
  char keys[32][8];
  int n_outputs = 1;
  if (result.type_index == kTVMFFIArray) {
    TVMFFIAny size = call(global("ffi.ArraySize"), &result, 1, "ffi.ArraySize");
    n_outputs = (int)size.v_int64;
  }
  if (n_outputs > 32) {
    fprintf(stderr, "more than 32 outputs\n");
    return 1;
  }
  for (int i = 0; i < n_outputs; ++i) {
    snprintf(keys[i], sizeof(keys[i]), "o%d", i);
    pairs[2 * i] = str(keys[i]);
    if (result.type_index == kTVMFFIArray) {
      TVMFFIAny item[2] = {result, integer(i)};
      pairs[2 * i + 1] = call(global("ffi.ArrayGetItem"), item, 2, "ffi.ArrayGetItem");
    } else {
      pairs[2 * i + 1] = result;
    }
  }
  TVMFFIAny map = call(global("ffi.Map"), pairs, 2 * n_outputs, "ffi.Map");
  TVMFFIAny save[2] = {map, str(argv[6])};
  call(global("runtime.SaveParamsToFile"), save, 2, "saving the outputs");
  return 0;
}
