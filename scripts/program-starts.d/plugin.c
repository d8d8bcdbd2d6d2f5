/* The plugin prog.c loads: it names its release (-DRELEASE='"A"' or "B"). */
const char *plugin_release(void)
{
    return RELEASE;
}
