/*
 * smtpText.c --
 *
 *	The octets of a text part's string value in the part's charset.
 *
 *	Scripts give text in two forms, and mime cannot tell them apart: a
 *	Tcl string of characters ("caf\u00e9 \u20ac"), and the octets of the
 *	text in its charset, converted first with "encoding convertto" (every
 *	character then at most U+00FF). The rule:
 *
 *	  - a value whose characters are all at most U+00FF and whose octets
 *	    (the characters' values) are valid in the declared charset is
 *	    those octets (for UTF-8, or no charset: valid UTF-8);
 *	  - any other value is text, and is encoded in the declared charset
 *	    (UTF-8 when none is declared); when the charset cannot hold one
 *	    of its characters, it is encoded in UTF-8 instead and the part
 *	    says so in its charset parameter.
 *
 *	Text in a Latin script written as characters ("caf\u00e9") is almost
 *	never valid UTF-8 as octets (a letter above U+007F would have to be
 *	followed by exactly the right symbols from U+0080..U+00BF), so it is
 *	taken as text; octets converted to UTF-8 always are valid. Under a
 *	single-byte charset the two readings give the same octets for every
 *	character the charset holds at its own value.
 *
 *	The common case is fast: Tcl's string form of a value is UTF-8 apart
 *	from NUL (C0 80) and, in Tcl 8, characters beyond the BMP (a pair of
 *	surrogates), so text encoded in UTF-8 is mostly the string form
 *	itself, used in place once it has been checked.
 */

#include "smtpInt.h"
#include <stdint.h>

#define HIGH8	0x8080808080808080ULL

/*
 * Checks p[0..n) as UTF-8 (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF). Returns 1 when it is; sets *wide when a lead
 * octet C4..FF occurs (a character above U+00FF in Tcl's string form),
 * looking at all of p even when it is not UTF-8.
 */

static int
Utf8Check(
    const unsigned char *p,
    size_t n,
    int *wide)
{
    size_t i = 0;
    int ok = 1, big = 0;

    while (i < n) {
	unsigned c, need, lo = 0x80, hi = 0xBF;

	if (i + 8 <= n) {
	    uint64_t x;

	    memcpy(&x, p + i, 8);
	    if ((x & HIGH8) == 0) {
		i += 8;
		continue;
	    }
	}
	c = p[i];
	if (c < 0x80) {
	    i++;
	    continue;
	}
	if (c >= 0xC4) {
	    big = 1;
	}
	if (c < 0xC2 || c > 0xF4) {
	    ok = 0;
	    i++;
	    continue;
	}
	if (c < 0xE0) {
	    need = 1;
	} else if (c < 0xF0) {
	    need = 2;
	    if (c == 0xE0) {
		lo = 0xA0;
	    } else if (c == 0xED) {
		hi = 0x9F;
	    }
	} else {
	    need = 3;
	    if (c == 0xF0) {
		lo = 0x90;
	    } else if (c == 0xF4) {
		hi = 0x8F;
	    }
	}
	if (n - i <= need || p[i + 1] < lo || p[i + 1] > hi
		|| (need > 1 && (p[i + 2] & 0xC0) != 0x80)
		|| (need > 2 && (p[i + 3] & 0xC0) != 0x80)) {
	    ok = 0;
	    i++;
	    continue;
	}
	i += need + 1;
    }
    *wide = big;
    return ok;
}

int
SmtpUtf8Valid(
    const unsigned char *p,
    size_t n)
{
    int wide;

    return Utf8Check(p, n, &wide);
}

static unsigned char *
PutUtf8(
    unsigned char *o,
    unsigned v)
{
    if (v < 0x80) {
	*o++ = (unsigned char) v;
    } else if (v < 0x800) {
	*o++ = (unsigned char) (0xC0 | (v >> 6));
	*o++ = (unsigned char) (0x80 | (v & 0x3F));
    } else if (v < 0x10000) {
	*o++ = (unsigned char) (0xE0 | (v >> 12));
	*o++ = (unsigned char) (0x80 | ((v >> 6) & 0x3F));
	*o++ = (unsigned char) (0x80 | (v & 0x3F));
    } else {
	*o++ = (unsigned char) (0xF0 | (v >> 18));
	*o++ = (unsigned char) (0x80 | ((v >> 12) & 0x3F));
	*o++ = (unsigned char) (0x80 | ((v >> 6) & 0x3F));
	*o++ = (unsigned char) (0x80 | (v & 0x3F));
    }
    return o;
}

/*
 * Octets as characters U+0000..U+00FF, in UTF-8, into ds.
 */

static void
Latin1ToUtf8(
    const unsigned char *p,
    size_t n,
    Tcl_DString *ds)
{
    unsigned char *o;
    size_t i;

    Tcl_DStringSetLength(ds, (Tcl_Size) (2 * n));
    o = (unsigned char *) Tcl_DStringValue(ds);
    for (i = 0; i < n; i++) {
	o = PutUtf8(o, p[i]);
    }
    Tcl_DStringSetLength(ds, (Tcl_Size) (o - (unsigned char *)
	    Tcl_DStringValue(ds)));
}

/*
 * Tcl's string form in UTF-8, into ds: C0 80 is NUL, a pair of surrogates
 * (Tcl 8's form of a character beyond the BMP) is that character, a lone
 * surrogate is U+FFFD, and an octet that starts no valid sequence is the
 * character of its value, as Tcl reads it.
 */

static void
FormToUtf8(
    const unsigned char *p,
    size_t n,
    Tcl_DString *ds)
{
    unsigned char *o;
    size_t i = 0;

    Tcl_DStringSetLength(ds, (Tcl_Size) (2 * n));
    o = (unsigned char *) Tcl_DStringValue(ds);
    while (i < n) {
	unsigned c = p[i];
	int wide;

	if (c < 0x80) {
	    *o++ = (unsigned char) c;
	    i++;
	} else if (c == 0xC0 && i + 1 < n && p[i + 1] == 0x80) {
	    *o++ = 0;
	    i += 2;
	} else if (c == 0xED && i + 2 < n && (p[i + 1] & 0xE0) == 0xA0
		&& (p[i + 2] & 0xC0) == 0x80) {
	    unsigned hiS = 0xD000 | ((unsigned) (p[i + 1] & 0x3F) << 6)
		    | (p[i + 2] & 0x3F);

	    if (hiS < 0xDC00 && i + 5 < n && p[i + 3] == 0xED
		    && (p[i + 4] & 0xF0) == 0xB0
		    && (p[i + 5] & 0xC0) == 0x80) {
		unsigned loS = 0xD000 | ((unsigned) (p[i + 4] & 0x3F) << 6)
			| (p[i + 5] & 0x3F);

		o = PutUtf8(o, 0x10000 + ((hiS - 0xD800) << 10)
			+ (loS - 0xDC00));
		i += 6;
	    } else {
		o = PutUtf8(o, 0xFFFD);
		i += 3;
	    }
	} else {
	    size_t len = (c < 0xE0) ? 2 : (c < 0xF0) ? 3 : 4;

	    if (i + len <= n && Utf8Check(p + i, len, &wide)) {
		memcpy(o, p + i, len);
		o += len;
		i += len;
	    } else {
		o = PutUtf8(o, c);
		i++;
	    }
	}
    }
    Tcl_DStringSetLength(ds, (Tcl_Size) (o - (unsigned char *)
	    Tcl_DStringValue(ds)));
}

/*
 * The Tcl encoding for a MIME charset name, or NULL: names in any case,
 * the IANA names and aliases that differ from Tcl's mapped, others tried
 * as they are.
 */

static Tcl_Encoding
CharsetEncoding(
    const char *cs,
    size_t n)
{
    static const char *const aliases[] = {
	"us-ascii", "ascii", "ansi_x3.4-1968", "ascii",
	"latin1", "iso8859-1", "latin-1", "iso8859-1", "l1", "iso8859-1",
	"shift_jis", "shiftjis", "x-sjis", "shiftjis",
	"iso-2022-jp", "iso2022-jp", "iso-2022-kr", "iso2022-kr",
	"ks_c_5601-1987", "cp949", "euc-cn", "euc-cn",
	NULL
    };
    char low[64];
    size_t i;

    if (n == 0 || n >= sizeof(low) - 8) {
	return NULL;
    }
    for (i = 0; i < n; i++) {
	char c = cs[i];

	low[i] = (char) ((c >= 'A' && c <= 'Z') ? c + 32 : c);
	if ((unsigned char) c < 0x21 || (unsigned char) c > 0x7E) {
	    return NULL;
	}
    }
    low[n] = '\0';
    for (i = 0; aliases[i] != NULL; i += 2) {
	if (strcmp(low, aliases[i]) == 0) {
	    return Tcl_GetEncoding(NULL, aliases[i + 1]);
	}
    }
    if ((strncmp(low, "iso-8859-", 9) == 0
	    || strncmp(low, "iso_8859-", 9) == 0) && n > 9) {
	char name[72];

	snprintf(name, sizeof(name), "iso8859-%s", low + 9);
	return Tcl_GetEncoding(NULL, name);
    }
    if (strncmp(low, "windows-", 8) == 0 && n > 8) {
	char name[72];

	snprintf(name, sizeof(name), "cp%s", low + 8);
	return Tcl_GetEncoding(NULL, name);
    }
    return Tcl_GetEncoding(NULL, low);
}

static int
IsUtf8Name(
    const char *cs,
    size_t n)
{
    char low[6];
    size_t i;

    if (n != 4 && n != 5) {
	return 0;
    }
    for (i = 0; i < n; i++) {
	low[i] = (char) ((cs[i] >= 'A' && cs[i] <= 'Z') ? cs[i] + 32 : cs[i]);
    }
    low[n] = '\0';
    return strcmp(low, "utf-8") == 0 || strcmp(low, "utf8") == 0;
}

/*
 * Whether octets are valid in enc: they come back the same from a round
 * trip through Tcl's encoding (an octet the charset does not define
 * comes back as the charset's replacement, or not at all). This works
 * alike in Tcl 8.6 and 9, whatever the profile.
 */

static int
ValidIn(
    Tcl_Encoding enc,
    const unsigned char *p,
    size_t n)
{
    Tcl_DString u, back;
    int same;

    Tcl_ExternalToUtfDString(enc, (const char *) p, (Tcl_Size) n, &u);
    Tcl_UtfToExternalDString(enc, Tcl_DStringValue(&u),
	    Tcl_DStringLength(&u), &back);
    same = ((size_t) Tcl_DStringLength(&back) == n
	    && memcmp(Tcl_DStringValue(&back), p, n) == 0);
    Tcl_DStringFree(&u);
    Tcl_DStringFree(&back);
    return same;
}

/*
 * Encodes Tcl's string form s[0..n) in enc into ds. Returns 0 when a
 * character is lost (the round trip does not give s back), checked so
 * rather than with Tcl 9's strict profile so that Tcl 8.6 checks alike.
 */

static int
EncodeIn(
    Tcl_Encoding enc,
    const char *s,
    size_t n,
    Tcl_DString *ds)
{
    Tcl_DString back;
    int same;

    Tcl_UtfToExternalDString(enc, s, (Tcl_Size) n, ds);
    Tcl_ExternalToUtfDString(enc, Tcl_DStringValue(ds),
	    Tcl_DStringLength(ds), &back);
    same = ((size_t) Tcl_DStringLength(&back) == n
	    && memcmp(Tcl_DStringValue(&back), s, n) == 0);
    Tcl_DStringFree(&back);
    return same;
}

/*
 * The octets of a text part's value under the declared charset cs[0..csLen)
 * (cs NULL: none). *bytesPtr is set to the octets: in 'scratch' (which
 * the caller frees; initialised here), or in the value's own byte array
 * or string form when they are those unchanged. Returns the charset
 * they are in: SMTP_CS_DECLARED, or SMTP_CS_UTF8 when they are UTF-8
 * with 8-bit octets and the part declared no charset (one must be added)
 * or one that could not hold the text (it must become utf-8); with the
 * flag SMTP_TEXT_CHARS when they are the UTF-8 of the value's characters
 * (not its octets), whose lines mime measured in characters.
 */

int
SmtpTextBytes(
    Tcl_Obj *obj,
    const char *cs,
    size_t csLen,
    const unsigned char **bytesPtr,
    size_t *lenPtr,
    Tcl_DString *scratch)
{
    const Tcl_ObjType *byteArray = Tcl_GetObjType("bytearray");
    const unsigned char *form = NULL, *oct;
    Tcl_Size n = 0, olen;
    Tcl_Encoding enc = NULL;
    Tcl_DString latin;
    int wide = 0, formOk = 0, utf8 = (cs == NULL || IsUtf8Name(cs, csLen));
    int result = SMTP_CS_DECLARED;

    Tcl_DStringInit(scratch);
    Tcl_DStringInit(&latin);
    if (!utf8) {
	enc = CharsetEncoding(cs, csLen);
    }
    if (byteArray == NULL || obj->typePtr != byteArray) {
	form = (const unsigned char *) Tcl_GetStringFromObj(obj, &n);
	formOk = Utf8Check(form, (size_t) n, &wide);
    }

    /*
     * Every character at most U+00FF: the octets, if valid.
     */

    if (!wide) {
	oct = SmtpGetBytes(obj, &olen, scratch);
	if (utf8 ? SmtpUtf8Valid(oct, (size_t) olen)
		: (enc == NULL || ValidIn(enc, oct, (size_t) olen))) {
	    *bytesPtr = oct;
	    *lenPtr = (size_t) olen;
	    if (cs == NULL && SmtpDataHas8bit(oct, (size_t) olen)) {
		result = SMTP_CS_UTF8;
	    }
	    goto done;
	}
	if (form == NULL) {
	    /* A byte array: its characters' string form. */
	    Latin1ToUtf8(oct, (size_t) olen, &latin);
	    form = (const unsigned char *) Tcl_DStringValue(&latin);
	    n = Tcl_DStringLength(&latin);
	    formOk = 1;
	}
	Tcl_DStringFree(scratch);
    }

    /*
     * Text: in the declared charset when it holds every character, else
     * in UTF-8.
     */

    if (enc != NULL) {
	if (EncodeIn(enc, (const char *) form, (size_t) n, scratch)) {
	    *bytesPtr = (const unsigned char *) Tcl_DStringValue(scratch);
	    *lenPtr = (size_t) Tcl_DStringLength(scratch);
	    goto done;
	}
	Tcl_DStringFree(scratch);
    }
    result = SMTP_TEXT_CHARS;
    if (!cs || !utf8) {
	result |= SMTP_CS_UTF8;
    }
    if (formOk && form != (const unsigned char *) Tcl_DStringValue(&latin)) {
	*bytesPtr = form;
	*lenPtr = (size_t) n;
    } else if (formOk) {
	Tcl_DStringAppend(scratch, Tcl_DStringValue(&latin),
		Tcl_DStringLength(&latin));
	*bytesPtr = (const unsigned char *) Tcl_DStringValue(scratch);
	*lenPtr = (size_t) Tcl_DStringLength(scratch);
    } else {
	FormToUtf8(form, (size_t) n, scratch);
	*bytesPtr = (const unsigned char *) Tcl_DStringValue(scratch);
	*lenPtr = (size_t) Tcl_DStringLength(scratch);
    }

  done:
    Tcl_DStringFree(&latin);
    if (enc != NULL) {
	Tcl_FreeEncoding(enc);
    }
    return result;
}

/*
 * Whether Tcl's string form p[0..n) holds a character beyond U+00FF: an
 * octet C4..FF (a lead octet of one), tested 8 at a time. For an octet b
 * with its top bit set, (b & 0x7F) + 0x3C reaches 0x80 exactly when b is
 * C4 or more, and never carries into the next octet.
 */

static int
HasWide(
    const unsigned char *p,
    size_t n)
{
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
	uint64_t x;

	memcpy(&x, p + i, 8);
	if (x & ((x & 0x7F7F7F7F7F7F7F7FULL) + 0x3C3C3C3C3C3C3C3CULL)
		& HIGH8) {
	    return 1;
	}
    }
    for (; i < n; i++) {
	if (p[i] >= 0xC4) {
	    return 1;
	}
    }
    return 0;
}

/*
 * The octets of a string value of a part that is not text (application,
 * image, audio ... types). A value whose characters are all at most U+00FF is
 * binary data as mime means it: the characters' values (SmtpGetBytes). A
 * character beyond U+00FF cannot be an octet: such a value is text given
 * as characters (JSON or XML made in the script, say), and its octets are
 * its UTF-8, so that nothing of it is lost. *bytesPtr is set as for
 * SmtpTextBytes ('scratch' initialised here, freed by the caller).
 * Returns 1 when the value is taken as text, else 0.
 */

int
SmtpBinaryBytes(
    Tcl_Obj *obj,
    const unsigned char **bytesPtr,
    size_t *lenPtr,
    Tcl_DString *scratch)
{
    const Tcl_ObjType *byteArray = Tcl_GetObjType("bytearray");
    Tcl_Size n;

    if ((byteArray == NULL || obj->typePtr != byteArray)) {
	const unsigned char *form =
		(const unsigned char *) Tcl_GetStringFromObj(obj, &n);
	int wide = 0;

	if (HasWide(form, (size_t) n)) {
	    Tcl_DStringInit(scratch);
	    if (Utf8Check(form, (size_t) n, &wide)) {
		*bytesPtr = form;
		*lenPtr = (size_t) n;
	    } else {
		FormToUtf8(form, (size_t) n, scratch);
		*bytesPtr = (const unsigned char *) Tcl_DStringValue(scratch);
		*lenPtr = (size_t) Tcl_DStringLength(scratch);
	    }
	    return 1;
	}
    }
    *bytesPtr = SmtpGetBytes(obj, &n, scratch);
    *lenPtr = (size_t) n;
    return 0;
}
