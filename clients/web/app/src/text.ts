// Every word the app shows, in English and Chinese (简体中文), chosen from the phone's language.
// A function per text that has blanks, so a missing blank is a type error, not a "{0}" on screen.

const en = {
  lang: "en",
  title: "Appointments · HIS Mesh",
  brand: "HIS Mesh Hospital",
  signOut: "Sign out",
  signInHeading: "Sign in",
  phoneLabel: "Mobile phone number",
  phoneHint:
    "The number you registered with the hospital, with its country code, e.g. +8613800000001.",
  sendCode: "Send code",
  codeLabel: "Code from the text message",
  codeSent: (until: string) =>
    "If this number is registered, a code is on its way by text message. " +
    `It is valid until ${until}.`,
  signIn: "Sign in",
  otherNumber: "Use another number or get a new code",
  myAppointments: "My appointments",
  loading: "Loading…",
  noAppointments: "You have no upcoming appointments.",
  appointmentLine: (department: string, when: string) => `${department}, ${when}`,
  arrived: "checked in",
  cancel: "Cancel",
  cancelLabel: (when: string) => `Cancel the appointment on ${when}`,
  cancelReason: "Cancelled by the patient in the app",
  cancelled: (when: string) => `Your appointment on ${when} is cancelled.`,
  bookHeading: "Book an appointment",
  departmentLabel: "Department",
  chooseDepartment: "Choose a department",
  freeTimes: "Free times",
  noFreeTimes: "There are no free times in this department at the moment.",
  bookLabel: (department: string, when: string) => `Book ${department} on ${when}`,
  laterTimes: "Show later times",
  booked: (department: string, when: string) => `Booked: ${department}, ${when}.`,
  unknownDepartment: "Clinic",
  // Refusals: what happened and what to do next, never a code or a stack trace.
  slotTaken: "Sorry, that time has just been taken. Please pick another.",
  slotEnded: "That time has already passed. Please pick another.",
  doubleBooked: "You already have an appointment at that time.",
  sessionEnded: "Please sign in again: your session has ended.",
  codeWrong:
    "That code is not right, or it was already used. Check the text message and try again.",
  codeExpired: "That code has expired. Ask for a new code.",
  tooManyAttempts: (wait: string) => `Too many attempts. Please try again in ${wait}.`,
  tooManyRequests: "Too many requests. Please wait a moment and try again.",
  phoneInvalid: "Enter the phone number with its country code, e.g. +8613800000001.",
  codeInvalid: (digits: number) => `Enter the ${digits} digits of the code.`,
  notAllowed: "You are not allowed to do that.",
  changedMeanwhile: "The appointment changed in the meantime. Please check it and try again.",
  signInOff: "Signing in by phone is not available at this hospital.",
  unreachable: "The hospital's system cannot be reached right now. Please try again.",
  failed: (code: string) => `Something went wrong (${code}). Please try again.`,
  seconds: (n: number) => (n === 1 ? "1 second" : `${n} seconds`),
  minutes: (n: number) => (n === 1 ? "1 minute" : `${n} minutes`),
};

export type Text = typeof en;

const zh: Text = {
  lang: "zh-CN",
  title: "预约挂号 · HIS Mesh",
  brand: "HIS Mesh 医院",
  signOut: "退出",
  signInHeading: "登录",
  phoneLabel: "手机号码",
  phoneHint: "您在医院登记的手机号码，含国家代码，例如 +8613800000001。",
  sendCode: "获取验证码",
  codeLabel: "短信验证码",
  codeSent: (until) => `如果该号码已登记，验证码已通过短信发送，${until} 前有效。`,
  signIn: "登录",
  otherNumber: "换一个号码或重新获取验证码",
  myAppointments: "我的预约",
  loading: "加载中…",
  noAppointments: "您没有即将到来的预约。",
  appointmentLine: (department, when) => `${department}，${when}`,
  arrived: "已签到",
  cancel: "取消预约",
  cancelLabel: (when) => `取消 ${when} 的预约`,
  cancelReason: "患者在应用中取消",
  cancelled: (when) => `您 ${when} 的预约已取消。`,
  bookHeading: "预约挂号",
  departmentLabel: "科室",
  chooseDepartment: "请选择科室",
  freeTimes: "可预约时间",
  noFreeTimes: "该科室目前没有可预约的时间。",
  bookLabel: (department, when) => `预约 ${department} ${when}`,
  laterTimes: "显示更晚的时间",
  booked: (department, when) => `预约成功：${department}，${when}。`,
  unknownDepartment: "门诊",
  slotTaken: "抱歉，该时间刚刚被约满，请选择其他时间。",
  slotEnded: "该时间已过，请选择其他时间。",
  doubleBooked: "您在该时间已有预约。",
  sessionEnded: "登录已过期，请重新登录。",
  codeWrong: "验证码不正确或已使用，请核对短信后重试。",
  codeExpired: "验证码已过期，请重新获取。",
  tooManyAttempts: (wait) => `尝试次数过多，请 ${wait} 后再试。`,
  tooManyRequests: "请求过于频繁，请稍后再试。",
  phoneInvalid: "请输入含国家代码的手机号码，例如 +8613800000001。",
  codeInvalid: (digits) => `请输入 ${digits} 位验证码。`,
  notAllowed: "您无权进行此操作。",
  changedMeanwhile: "该预约已被更改，请核对后重试。",
  signInOff: "本院暂不支持手机号登录。",
  unreachable: "暂时无法连接医院系统，请稍后再试。",
  failed: (code) => `出现错误（${code}），请重试。`,
  seconds: (n) => `${n} 秒`,
  minutes: (n) => `${n} 分钟`,
};

/** The phone's first language that the app speaks, English otherwise. */
export function chooseText(languages: readonly string[]): Text {
  return chooseLocale(languages).text;
}

/** The words, and the phone's own locale of that language for dates (`en-GB`, `zh-HK`). */
export function chooseLocale(languages: readonly string[]): { text: Text; locale: string } {
  for (const language of languages) {
    if (language.toLowerCase().startsWith("zh")) return { text: zh, locale: language };
    if (language.toLowerCase().startsWith("en")) return { text: en, locale: language };
  }
  return { text: en, locale: en.lang };
}

/** A wait in words, rounded up: "40 seconds", "3 minutes". */
export function waitInWords(text: Text, milliseconds: number): string {
  const seconds = Math.max(1, Math.ceil(milliseconds / 1000));
  return seconds < 90 ? text.seconds(seconds) : text.minutes(Math.ceil(seconds / 60));
}
