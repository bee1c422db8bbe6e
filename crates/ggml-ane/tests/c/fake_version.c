/* Test-only: a ggml_version() reporting FAKE_VERSION, preloaded so our library sees a host of
   another version (the refusal line of the version table). */
const char * ggml_version(void) { return FAKE_VERSION; }
