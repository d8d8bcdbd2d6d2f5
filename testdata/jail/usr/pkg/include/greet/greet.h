int greet(const char *who);
int greet_all(void);
