// The patient web app: built from app/ into app/dist/, which `his up` serves through the gateway's
// origin (so the app calls the API on its own origin and needs no CORS in production use).
import { defineConfig } from "vite";

export default defineConfig({
  root: "app",
  // Relative asset URLs: the gateway may serve the app under a path prefix.
  base: "./",
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // Small enough to read in a review; no source maps shipped to patients' phones.
    sourcemap: false,
  },
});
