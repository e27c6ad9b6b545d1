// The patient's upcoming appointments, from every page of ListAppointments. Appointments come in
// start-time order from the oldest, and there is no "from now on" filter: a patient's past
// bookings that were never checked in or completed stay BOOKED or ARRIVED, so the first page alone
// may hold only the past and hide every upcoming one.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Appointment } from "../../src/gen/his/scheduling/v1/scheduling_service_pb.js";

/** One page of the patient's appointments, from `pageToken` ("" for the first). */
export type AppointmentPage = (pageToken: string) => Promise<{
  readonly appointments: readonly Appointment[];
  readonly nextPageToken: string;
}>;

// 100 a page (the services allow up to 500); at most 50 pages, decades of visits, so that a token
// that never ends (a bug) cannot keep the app asking forever.
export const APPOINTMENTS_PER_PAGE = 100;
const MAX_PAGES = 50;

/** The appointments that have not ended by `now`, in start-time order. */
export async function upcomingAppointments(
  page: AppointmentPage,
  now: number = Date.now(),
): Promise<Appointment[]> {
  const upcoming: Appointment[] = [];
  let token = "";
  for (let pages = 0; pages < MAX_PAGES; pages++) {
    const reply = await page(token);
    upcoming.push(
      ...reply.appointments.filter(
        (appointment) => !appointment.endTime || timestampDate(appointment.endTime).getTime() > now,
      ),
    );
    token = reply.nextPageToken;
    if (!token) break;
  }
  return upcoming;
}
