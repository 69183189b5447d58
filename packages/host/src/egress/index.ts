export {
  type AddressClass,
  classifyAddress,
  compileAllowlist,
  isIpLiteralHost,
  normalizeHostName,
} from "./address-policy.ts";
export {
  EgressProxy,
  type EgressProxyOptions,
  type EgressProxyTestOverrides,
  type EgressRecord,
  MAX_HEADER_BYTES,
} from "./egress-proxy.ts";
