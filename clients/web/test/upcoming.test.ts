// The app's "My appointments": every upcoming appointment, however many past ones come first.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import {
  AppointmentSchema,
  type Appointment,
} from "../src/gen/his/scheduling/v1/scheduling_service_pb.js";
import { upcomingAppointments, type AppointmentPage } from "../app/src/upcoming.js";

const NOW = Date.UTC(2026, 11, 6, 8, 0);
const HOUR = 3_600_000;

function appointment(index: number, endMs: number): Appointment {
  return create(AppointmentSchema, {
    name: `appointments/${index}`,
    startTime: timestampFromMs(endMs - HOUR / 4),
    endTime: timestampFromMs(endMs),
  });
}

/** ListAppointments over `all` (oldest first), `size` a page, as the service pages. */
function pages(all: Appointment[], size: number): { page: AppointmentPage; asked: string[] } {
  const asked: string[] = [];
  const page: AppointmentPage = async (token) => {
    asked.push(token);
    const from = token ? Number(token) : 0;
    const next = from + size < all.length ? String(from + size) : "";
    return { appointments: all.slice(from, from + size), nextPageToken: next };
  };
  return { page, asked };
}

describe("upcomingAppointments", () => {
  it("finds the upcoming ones behind pages of past ones that were never closed", async () => {
    const past = Array.from({ length: 250 }, (_, i) => appointment(i, NOW - (300 - i) * HOUR));
    const later = [appointment(900, NOW + HOUR), appointment(901, NOW + 48 * HOUR)];
    const { page, asked } = pages([...past, ...later], 100);

    const upcoming = await upcomingAppointments(page, NOW);

    assert.deepEqual(
      upcoming.map((a) => a.name),
      ["appointments/900", "appointments/901"],
    );
    assert.deepEqual(asked, ["", "100", "200"]);
  });

  it("keeps one that has started but not ended, and asks once when one page holds all", async () => {
    const running = appointment(1, NOW + HOUR / 8);
    const { page, asked } = pages([appointment(0, NOW - HOUR), running], 100);

    assert.deepEqual(await upcomingAppointments(page, NOW), [running]);
    assert.deepEqual(asked, [""]);
  });

  it("stops after fifty pages when the page token never ends", async () => {
    let calls = 0;
    const endless: AppointmentPage = async () => {
      calls++;
      return { appointments: [], nextPageToken: "again" };
    };

    assert.deepEqual(await upcomingAppointments(endless, NOW), []);
    assert.equal(calls, 50);
  });
});
