int greet(const char *who);
