# aclocal.m4 -- hand-written for the smtp extension (this project does not
# use automake/aclocal).  Our own autoconf macros live in m4/smtp.m4 and (Windows)
# m4/smtpwin.m4.
m4_include([m4/smtp.m4])
m4_include([m4/smtpwin.m4])
