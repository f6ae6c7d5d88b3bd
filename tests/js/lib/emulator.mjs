// Starts a real `webpubsub-emulator` process on a free port for one test file and stops it
// afterwards. The binary is the one `cargo build` left in target/, unless
// WEBPUBSUB_EMULATOR_BIN names another.

import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import readline from "node:readline";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

/** The access key every test emulator uses: the public development key. */
export const ACCESS_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

/**
 * Spawns the emulator with `--port 0` and resolves once it prints the address it bound.
 * Returns `{ endpoint, port, connectionString, stop }`.
 */
export async function startEmulator(extraArgs = []) {
  const bin =
    process.env.WEBPUBSUB_EMULATOR_BIN ??
    path.join(repoRoot, "target", "debug", "webpubsub-emulator");
  const child = spawn(bin, ["--port", "0", ...extraArgs], {
    stdio: ["ignore", "pipe", "pipe"],
  });

  // Pass the emulator's log through, and remember any panic so a test can fail on it even
  // when the client never noticed.
  const panics = [];
  readline.createInterface({ input: child.stderr }).on("line", (line) => {
    process.stderr.write(`[emulator] ${line}\n`);
    if (line.includes("panicked at")) panics.push(line);
  });

  const port = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error("emulator did not start within 20 s")), 20000);
    child.once("error", reject);
    child.once("exit", (code) => reject(new Error(`emulator exited early with code ${code}`)));
    lines.on("line", (line) => {
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });

  const endpoint = `http://127.0.0.1:${port}`;
  return {
    port,
    endpoint,
    connectionString: `Endpoint=${endpoint};AccessKey=${ACCESS_KEY};Version=1.0;`,
    /** Panic lines the emulator has logged so far. */
    panics,
    /** Stops the emulator; throws if it panicked or did not exit cleanly on SIGTERM. */
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        const code = await exited;
        if (code !== 0) throw new Error(`emulator exited with code ${code} on SIGTERM`);
      }
      if (panics.length > 0) throw new Error(`emulator panicked: ${panics.join("; ")}`);
    },
  };
}
