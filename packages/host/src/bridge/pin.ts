/**
 * Where a call to an upstream a tenant chose goes: the host name resolved (or taken as an address
 * literal), every address it resolves to checked against the upstream address policy, and the
 * first one pinned for the connection, so that DNS cannot re-point the name at the host's own
 * network between the check and the connect (rebinding). Used by the bridge and by notifications.
 */
import { lookup as dnsLookup } from "node:dns/promises";
import type { LookupFunction } from "node:net";
import type { AddressClass } from "../egress/address-policy.ts";
import { upstreamAddressRefusal } from "./policy.ts";

const DNS_TTL_MS = 30_000;

/** Why no address was pinned: the name does not resolve, or one of its addresses is refused. */
export class PinRefusal extends Error {
  readonly host: string;
  /** The refused address's kind; null when the name does not resolve. */
  readonly refusal: AddressClass | "metadata" | null;

  constructor(host: string, refusal: AddressClass | "metadata" | null) {
    super(refusal === null ? `'${host}' does not resolve` : `'${host}' resolves to a ${refusal} address`);
    this.host = host;
    this.refusal = refusal;
  }
}

export class AddressPinner {
  readonly #resolve: (host: string) => Promise<string[]>;
  /** Answers by name, for DNS_TTL_MS: calls in a burst resolve once. */
  readonly #dns = new Map<string, { at: number; addresses: Promise<string[]> }>();

  /** `resolve`: name resolution (default the system resolver; tests give their own). */
  constructor(resolve?: (host: string) => Promise<string[]>) {
    this.#resolve = resolve ?? (async (h) => (await dnsLookup(h, { all: true })).map((a) => a.address));
  }

  /**
   * The address to connect to for `host` (a URL's hostname, brackets and all); PinRefusal when it
   * does not resolve or any address it resolves to is one the policy refuses (`internal` lets
   * private and loopback ones through).
   */
  async pin(host: string, internal: boolean): Promise<string> {
    const literal = host.startsWith("[") ? host.slice(1, -1) : host;
    let addresses: string[];
    if (/^[\d.]+$/.test(literal) || literal.includes(":")) addresses = [literal];
    else {
      let cached = this.#dns.get(literal);
      if (!cached || Date.now() - cached.at > DNS_TTL_MS) {
        cached = { at: Date.now(), addresses: this.#resolve(literal) };
        cached.addresses.catch(() => this.#dns.delete(literal));
        this.#dns.set(literal, cached);
      }
      addresses = await cached.addresses.catch(() => {
        throw new PinRefusal(literal, null);
      });
    }
    if (addresses.length === 0) throw new PinRefusal(literal, null);
    for (const address of addresses) {
      const refusal = upstreamAddressRefusal(address, internal);
      if (refusal) throw new PinRefusal(literal, refusal);
    }
    return addresses[0] as string;
  }
}

/** A `lookup` for http(s).request that answers every name with `address`: the pinned one. */
export function pinnedLookup(address: string): LookupFunction {
  const family = address.includes(":") ? 6 : 4;
  return (_host, options, callback) => {
    if (options.all)
      (callback as (e: null, a: { address: string; family: number }[]) => void)(null, [{ address, family }]);
    else callback(null, address, family);
  };
}
