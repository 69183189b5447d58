/** Runs a benchmark so that Ctrl-C or a timeout still tears down its sandboxes, namespaces and filter table. */
export async function measureThenTearDown<T>(
  name: string,
  measure: () => Promise<T>,
  tearDown: () => Promise<void>,
): Promise<T> {
  let interrupt: (err: Error) => void = () => {};
  const interrupted = new Promise<never>((_, reject) => {
    interrupt = reject;
  });
  const onSignal = (signal: NodeJS.Signals) => interrupt(new Error(`bench ${name}: interrupted by ${signal}`));
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    return await Promise.race([measure(), interrupted]);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await tearDown();
  }
}
