/**
 * Host-name and address rules for the egress proxy. Every input here comes from a hostile
 * sandbox (request targets) or from DNS for names the sandbox chose, so the functions are
 * strict: host names must be plain ASCII LDH names, anything a resolver or URL parser could read
 * as an IPv4 or IPv6 literal is reported as one, and an address is public only when it is
 * outside every special-purpose range that could reach the host, its network or the cloud
 * metadata service.
 */
import { isIP, isIPv4, isIPv6 } from "node:net";

/** Why an address is not a public unicast address. */
export type AddressClass = "unspecified" | "loopback" | "private" | "link-local" | "cgnat" | "multicast" | "reserved";

const MAX_HOST_LENGTH = 253;
const LABEL = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;
const PRINTABLE_ASCII = /^[\x21-\x7e]+$/;

/**
 * True when `host` names an IP address rather than a domain: a bracketed IPv6 literal, a
 * dotted-quad or IPv6 address, or any spelling that URL parsers and `inet_aton` turn into an IPv4
 * address (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`). Following the WHATWG URL rule, a name
 * whose last label is numeric (decimal, or hex with `0x`) counts as an IPv4 literal.
 */
export function isIpLiteralHost(host: string): boolean {
  if (host.startsWith("[")) return true;
  let h = host.toLowerCase();
  if (h.endsWith(".")) h = h.slice(0, -1);
  // A colon never occurs in a DNS name: treat any such host as an IPv6 spelling.
  if (isIP(h) !== 0 || h.includes(":")) return true;
  const last = h.slice(h.lastIndexOf(".") + 1);
  return /^(?:[0-9]+|0x[0-9a-f]*)$/.test(last);
}

/**
 * The canonical form of a host name (ASCII lower case, one trailing dot removed), or `null` when
 * it is not a syntactically valid DNS name. Non-ASCII input is rejected before lower-casing, so
 * characters such as U+212A (Kelvin sign, lower-cases to `k`) cannot alias an allowed name.
 */
export function normalizeHostName(host: string): string | null {
  if (host.length === 0 || host.length > MAX_HOST_LENGTH + 1 || !PRINTABLE_ASCII.test(host)) return null;
  let h = host.toLowerCase();
  if (h.endsWith(".")) h = h.slice(0, -1);
  if (h.length === 0 || h.length > MAX_HOST_LENGTH) return null;
  for (const label of h.split(".")) {
    if (!LABEL.test(label)) return null;
  }
  return h;
}

/** A compiled allowlist: exact domains, and `*.domain` patterns that match subdomains only. */
export interface HostAllowlist {
  matches(host: string): boolean;
}

/**
 * Compiles allowlist patterns. Each pattern is an exact domain (`deb.debian.org`) or
 * `*.example.org` (any name ending in `.example.org`, not `example.org` itself). Matching is
 * case-insensitive and ignores one trailing dot. Throws on patterns that are not valid domain
 * names or that are IP literals.
 */
export function compileAllowlist(patterns: readonly string[]): HostAllowlist {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  for (const pattern of patterns) {
    const wildcard = pattern.startsWith("*.");
    const domain = normalizeHostName(wildcard ? pattern.slice(2) : pattern);
    if (domain === null || isIpLiteralHost(domain)) {
      throw new TypeError(`invalid egress allowlist pattern: ${JSON.stringify(pattern)}`);
    }
    if (wildcard) suffixes.push(`.${domain}`);
    else exact.add(domain);
  }
  return {
    matches(host: string): boolean {
      const h = normalizeHostName(host);
      if (h === null) return false;
      if (exact.has(h)) return true;
      return suffixes.some((suffix) => h.length > suffix.length && h.endsWith(suffix));
    },
  };
}

function parseIPv4(ip: string): number | null {
  if (!isIPv4(ip)) return null;
  const parts = ip.split(".").map(Number);
  return (((parts[0] ?? 0) << 24) | ((parts[1] ?? 0) << 16) | ((parts[2] ?? 0) << 8) | (parts[3] ?? 0)) >>> 0;
}

function parseIPv6(address: string): bigint | null {
  const zone = address.indexOf("%");
  let ip = zone >= 0 ? address.slice(0, zone) : address;
  if (!isIPv6(ip)) return null;
  const lastColon = ip.lastIndexOf(":");
  const tail = ip.slice(lastColon + 1);
  if (tail.includes(".")) {
    const v4 = parseIPv4(tail);
    if (v4 === null) return null;
    ip = `${ip.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const halves = ip.split("::");
  const head = halves[0] ? halves[0].split(":") : [];
  const rest = halves.length > 1 && halves[1] ? halves[1].split(":") : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length > 2 || missing < 0 || (halves.length === 1 && missing !== 0)) return null;
  const groups = [...head, ...Array<string>(missing).fill("0"), ...rest];
  let value = 0n;
  for (const group of groups) value = (value << 16n) | BigInt(Number.parseInt(group, 16));
  return value;
}

const V4_RANGES: readonly (readonly [string, number, AddressClass])[] = [
  ["0.0.0.0", 8, "unspecified"],
  ["10.0.0.0", 8, "private"],
  ["100.64.0.0", 10, "cgnat"],
  ["127.0.0.0", 8, "loopback"],
  ["169.254.0.0", 16, "link-local"],
  ["172.16.0.0", 12, "private"],
  ["192.0.0.0", 24, "reserved"],
  ["192.0.2.0", 24, "reserved"],
  ["192.88.99.0", 24, "reserved"],
  ["192.168.0.0", 16, "private"],
  ["198.18.0.0", 15, "reserved"],
  ["198.51.100.0", 24, "reserved"],
  ["203.0.113.0", 24, "reserved"],
  ["224.0.0.0", 4, "multicast"],
  ["240.0.0.0", 4, "reserved"],
];

const V4_TABLE = V4_RANGES.map(([base, bits, kind]) => ({ base: parseIPv4(base) ?? 0, shift: 32 - bits, kind }));

function classifyV4(ip: number): AddressClass | null {
  for (const { base, shift, kind } of V4_TABLE) {
    if (ip >>> shift === base >>> shift) return kind;
  }
  return null;
}

function inV6(ip: bigint, prefix: bigint, bits: number): boolean {
  const shift = BigInt(128 - bits);
  return ip >> shift === prefix >> shift;
}

const V6 = (s: string): bigint => parseIPv6(s) ?? 0n;
const V6_MAPPED = V6("::ffff:0:0");
const V6_NAT64 = V6("64:ff9b::");
const V6_6TO4 = V6("2002::");
const V6_RANGES: readonly (readonly [bigint, number, AddressClass])[] = [
  [V6("fc00::"), 7, "private"],
  [V6("fec0::"), 10, "private"],
  [V6("fe80::"), 10, "link-local"],
  [V6("ff00::"), 8, "multicast"],
  [V6("2001::"), 23, "reserved"],
  [V6("2001:db8::"), 32, "reserved"],
  [V6("3fff::"), 20, "reserved"],
];

function classifyV6(ip: bigint): AddressClass | null {
  if (ip === 0n) return "unspecified";
  if (ip === 1n) return "loopback";
  if (inV6(ip, V6_MAPPED, 96) || inV6(ip, V6_NAT64, 96)) return classifyV4(Number(ip & 0xffffffffn));
  if (inV6(ip, V6_6TO4, 16)) return classifyV4(Number((ip >> 80n) & 0xffffffffn));
  for (const [prefix, bits, kind] of V6_RANGES) {
    if (inV6(ip, prefix, bits)) return kind;
  }
  // Only 2000::/3 is allocated as global unicast.
  if (!inV6(ip, V6("2000::"), 3)) return "reserved";
  return null;
}

/**
 * Classifies a resolved address: `null` for a public unicast address, otherwise the kind of
 * special-purpose range it lies in. IPv4-mapped, NAT64 (`64:ff9b::/96`) and 6to4 addresses are
 * judged by the IPv4 address they carry. A string that is not an IP address is `"reserved"`.
 */
export function classifyAddress(address: string): AddressClass | null {
  const v4 = parseIPv4(address);
  if (v4 !== null) return classifyV4(v4);
  const v6 = parseIPv6(address);
  if (v6 !== null) return classifyV6(v6);
  return "reserved";
}
